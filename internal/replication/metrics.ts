import { Counter, Gauge, type Registry } from 'prom-client';
import { TaskKind, TaskPriority } from '../../gen/haystack/v1/replication_pb.js';
import type { ManagerEvents, ReplicationManager } from './manager.js';
import { placementMetrics } from './placement-metrics.js';
import { PRIORITIES } from './queue.js';

/**
 * Live blobs with fewer live replicas than their committed target, counted by the
 * active instance (0 on a standby, whose mirror may lag). O(blobs): for scrapes
 * and GetStats, not hot paths.
 */
export function blobsBelowTarget(m: ReplicationManager): number {
  if (!m.active) return 0;
  // Placement mode: only hot blobs have targets above their group's size.
  if (m.placementMode) return m.hot.belowTargetCount();
  let n = 0;
  for (const b of m.mirror.liveBlobs()) if (m.blobs.planner.liveHolders(b).length < b.targetReplicaCount) n++;
  return n;
}

/**
 * Prometheus metrics of the replication manager (on the process's /metrics):
 * the same figures as GetStats, read at scrape time, plus event counters.
 */
export function replicationMetrics(registry: Registry, getManager: () => ReplicationManager): ManagerEvents {
  const registers = [registry];
  new Gauge({
    name: 'haystack_replication_active',
    help: '1 on the instance holding the manager lease',
    registers,
    collect() {
      this.set(getManager().active ? 1 : 0);
    },
  });
  new Gauge({
    name: 'haystack_replication_queue_depth',
    help: 'Tasks waiting (queued or in backoff), by priority',
    labelNames: ['priority'],
    registers,
    collect() {
      const d = getManager().queue.depth();
      for (const p of PRIORITIES) this.set({ priority: TaskPriority[p].toLowerCase() }, d.get(p) ?? 0);
    },
  });
  new Gauge({
    name: 'haystack_replication_tasks_in_flight',
    help: 'Tasks running',
    registers,
    collect() {
      this.set(getManager().queue.inFlight);
    },
  });
  new Gauge({
    name: 'haystack_replication_tracked_blobs',
    help: 'Blobs whose access heat is tracked',
    registers,
    collect() {
      this.set(getManager().heat.size);
    },
  });
  new Gauge({
    name: 'haystack_replication_hot_blobs',
    help: 'Hot blobs: read at least ACCESS_RATE_THRESHOLD times a minute or still above the default target (the GetStats hot list)',
    registers,
    collect() {
      this.set(getManager().hotBlobs().length);
    },
  });
  new Gauge({
    name: 'haystack_replication_blobs_below_target',
    help: 'Live blobs with fewer recorded replicas than their committed target (counted by the active instance; 0 on standbys)',
    registers,
    collect() {
      this.set(blobsBelowTarget(getManager()));
    },
  });
  new Gauge({
    name: 'haystack_replication_breaker_open',
    help: '1 while a store circuit breaker is open',
    labelNames: ['store'],
    registers,
    collect() {
      this.reset();
      for (const b of getManager().queue.breakerStates(Date.now()))
        this.set({ store: b.storeId }, b.open ? 1 : 0);
    },
  });
  new Gauge({
    name: 'haystack_replication_applied_index',
    help: 'Directory metadata log index applied',
    registers,
    collect() {
      this.set(Number(getManager().mirror.appliedIndex));
    },
  });
  placementMetrics(registry, getManager);
  const tasks = new Counter({
    name: 'haystack_replication_tasks_total',
    help: 'Task attempts finished, by kind and outcome (done, retry, failed)',
    labelNames: ['kind', 'outcome'],
    registers,
  });
  const reports = new Counter({
    name: 'haystack_replication_access_batches_total',
    help: 'ReportAccess batches received',
    registers,
  });
  const collected = new Counter({
    name: 'haystack_replication_gc_collected_total',
    help: 'Unreferenced needles deleted by garbage collection',
    registers,
  });
  const repairs = new Counter({
    name: 'haystack_replication_repairs_total',
    help: 'Corrupt replicas dropped and replaced',
    registers,
  });
  const tierMoves = new Counter({
    name: 'haystack_replication_tier_moves_total',
    help: 'Blobs moved between tiers: encode (to the erasure-coded tier) or rematerialise (back to full replicas), by outcome',
    labelNames: ['kind', 'outcome'],
    registers,
  });
  const tierBytes = new Counter({
    name: 'haystack_replication_tier_move_bytes_total',
    help: 'Blob bytes encoded or re-materialised (encode/decode throughput: rate() of this over the seconds counter)',
    labelNames: ['kind'],
    registers,
  });
  const tierSeconds = new Counter({
    name: 'haystack_replication_tier_move_seconds_total',
    help: 'Wall time spent moving blobs between tiers (read, code, write every shard or replica)',
    labelNames: ['kind'],
    registers,
  });
  const shardRepairs = new Counter({
    name: 'haystack_replication_shard_repairs_total',
    help: 'Erasure-coded shards written by repair: rebuilt from k others onto a store swapped in for a lost one (rebuilt) or over a missing or corrupt shard (corrupt), or moved off a draining store (drained)',
    labelNames: ['reason'],
    registers,
  });
  const shardsCollected = new Counter({
    name: 'haystack_replication_orphan_shards_collected_total',
    help: 'Orphan erasure-coded shards (named by no committed stripe) deleted after GC_GRACE_PERIOD',
    registers,
  });
  return {
    onShardRepair: (_store, _stripe, reason) => shardRepairs.inc({ reason }),
    onShardCollected: () => shardsCollected.inc(),
    onTierMove: (kind, outcome, bytes, ms) => {
      tierMoves.inc({ kind, outcome });
      if (outcome === 'done') tierBytes.inc({ kind }, bytes);
      tierSeconds.inc({ kind }, ms / 1000);
    },
    onTaskFinished: (t, outcome) => tasks.inc({ kind: TaskKind[t.kind].toLowerCase(), outcome }),
    onReport: () => reports.inc(),
    onCollected: () => collected.inc(),
    onRepair: () => repairs.inc(),
  };
}
