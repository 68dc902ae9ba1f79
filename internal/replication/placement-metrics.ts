import { Gauge, type Registry } from 'prom-client';
import { PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import type { ReplicationManager } from './manager.js';

/**
 * Prometheus gauges of placement mode, read at scrape time from the manager's
 * mirror, backfill and anti-entropy (all 0 on a cluster of per-blob records).
 */
export function placementMetrics(registry: Registry, getManager: () => ReplicationManager): void {
  const registers = [registry];
  new Gauge({
    name: 'haystack_replication_placement_groups',
    help: 'Placement groups in the directory map (0: per-blob records)',
    registers,
    collect() {
      this.set(getManager().mirror.placement.groupCount);
    },
  });
  new Gauge({
    name: 'haystack_replication_joining_members',
    help: 'Placement-group members still JOINING (being backfilled, or back after being DOWN)',
    registers,
    collect() {
      let n = 0;
      for (const g of getManager().mirror.placement.groups) {
        for (const mm of g?.members ?? []) if (mm.state === PlacementMemberState.JOINING) n++;
      }
      this.set(n);
    },
  });
  new Gauge({
    name: 'haystack_replication_leaving_members',
    help: 'Placement-group members leaving (a drain or balance move waiting for its replacement to be ACTIVE)',
    registers,
    collect() {
      let n = 0;
      for (const g of getManager().mirror.placement.groups)
        for (const mm of g?.members ?? []) if (mm.leaving) n++;
      this.set(n);
    },
  });
  new Gauge({
    name: 'haystack_replication_draining_stores',
    help: 'Stores an operator is draining (haystack drain), drained ones included until undrained',
    registers,
    collect() {
      let n = 0;
      for (const s of getManager().mirror.stores.values()) if (s.draining) n++;
      this.set(n);
    },
  });
  new Gauge({
    name: 'haystack_replication_extra_replicas',
    help: 'Extra replicas of hot blobs beyond their placement group',
    registers,
    collect() {
      let n = 0;
      for (const rec of getManager().mirror.placement.extras.values()) n += rec.replicas.length;
      this.set(n);
    },
  });
  new Gauge({
    name: 'haystack_replication_digest_mismatches',
    help: 'Placement groups whose ACTIVE members disagreed in the last anti-entropy round',
    registers,
    collect() {
      this.set(getManager().antiEntropy.mismatchedNow);
    },
  });
  new Gauge({
    name: 'haystack_replication_anti_entropy_copies',
    help: 'Needles (live or tombstones) anti-entropy copied between members since start',
    registers,
    collect() {
      this.set(getManager().antiEntropy.copiesTotal);
    },
  });
  new Gauge({
    name: 'haystack_replication_backfill_needles',
    help: 'Backfills under way: needles of the source listed and copied so far, by group and joining store',
    labelNames: ['group', 'store', 'stage'],
    registers,
    collect() {
      this.reset();
      for (const p of getManager().backfill.progress.values()) {
        const labels = { group: String(p.group), store: p.storeId };
        this.set({ ...labels, stage: 'listed' }, p.listed);
        this.set({ ...labels, stage: 'copied' }, p.copied);
      }
    },
  });
  new Gauge({
    name: 'haystack_replication_backfill_promoted',
    help: 'Backfilled members made ACTIVE since start',
    registers,
    collect() {
      this.set(getManager().backfill.promotedTotal);
    },
  });
}
