import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { ShardStore, ShardTotals } from './shard-store.js';
import type { Store, StoreStats, StoreTestHooks } from './store.js';

/** fdatasync pairs take from ~50 µs (tmpfs) to seconds (a saturated disk). */
const FSYNC_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];
const COMPACTION_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600];

/**
 * Prometheus metrics of one store, on the process's registry (Prometheus
 * conventions: base units seconds and bytes in the names, `_total` counters).
 *
 * - Gauges are read at scrape time from `Store.stats()` (one statfs plus a walk
 *   of the in-memory volume table): per volume (`volume` label) and per store.
 * - Counters and histograms are fed by the store's hooks (`hooks`, passed to
 *   `Store.open`): group commits (fdatasync of the volume + index append +
 *   fdatasync), compactions, scrubs.
 */
export class StoreMetrics {
  private store: Store | undefined;
  private shards: ShardStore | undefined;
  /** Pass as (or merge into) `StoreOpenOptions.hooks`. */
  readonly hooks: Pick<StoreTestHooks, 'onGroupCommit' | 'onCompaction' | 'onScrub'>;

  constructor(registry: Registry) {
    const registers = [registry];
    // One stats() call serves every gauge of a scrape (they collect one after another).
    let pending: Promise<StoreStats | undefined> | undefined;
    const stats = (): Promise<StoreStats | undefined> => {
      if (!this.store) return Promise.resolve(undefined);
      pending ??= this.store
        .stats()
        .catch(() => undefined)
        .finally(() => {
          setImmediate(() => {
            pending = undefined;
          });
        });
      return pending;
    };
    const gauge = (
      o: { name: string; help: string; labelNames?: string[] },
      fill: (g: Gauge<string>, s: StoreStats) => void,
    ): Gauge<string> =>
      new Gauge({
        ...o,
        registers,
        async collect() {
          const s = await stats();
          this.reset();
          if (s) fill(this, s);
        },
      });

    gauge(
      {
        name: 'haystack_store_volumes',
        help: 'Volumes on this store, by state (writable, read_only, compacting)',
        labelNames: ['state'],
      },
      (g, s) => {
        const c = { writable: 0, read_only: 0, compacting: 0 };
        for (const v of s.volumes) {
          if (v.compacting) c.compacting++;
          else if (v.readOnly) c.read_only++;
          else c.writable++;
        }
        for (const [state, n] of Object.entries(c)) g.set({ state }, n);
      },
    );
    gauge(
      {
        name: 'haystack_store_volume_needles',
        help: 'Needles in a volume: live (current blobs) and deleted (superseded or tombstoned records compaction would drop)',
        labelNames: ['volume', 'state'],
      },
      (g, s) => {
        for (const v of s.volumes) {
          g.set({ volume: String(v.volumeId), state: 'live' }, v.needleCount);
          g.set({ volume: String(v.volumeId), state: 'deleted' }, v.deletedCount);
        }
      },
    );
    gauge(
      {
        name: 'haystack_store_volume_size_bytes',
        help: 'Bytes appended to the volume file (its logical end)',
        labelNames: ['volume'],
      },
      (g, s) => {
        for (const v of s.volumes) g.set({ volume: String(v.volumeId) }, v.sizeBytes);
      },
    );
    gauge(
      {
        name: 'haystack_store_volume_live_bytes',
        help: 'Bytes of live needles in the volume',
        labelNames: ['volume'],
      },
      (g, s) => {
        for (const v of s.volumes) g.set({ volume: String(v.volumeId) }, v.liveBytes);
      },
    );
    gauge(
      {
        name: 'haystack_store_volume_efficiency_ratio',
        help: 'Live bytes / volume size (0..1); below the compaction threshold the volume is compacted',
        labelNames: ['volume'],
      },
      (g, s) => {
        for (const v of s.volumes) g.set({ volume: String(v.volumeId) }, v.efficiency);
      },
    );
    gauge(
      {
        name: 'haystack_store_volume_read_only',
        help: '1 when the volume takes no more appends (sealed or broken)',
        labelNames: ['volume'],
      },
      (g, s) => {
        for (const v of s.volumes) g.set({ volume: String(v.volumeId) }, v.readOnly ? 1 : 0);
      },
    );
    gauge({ name: 'haystack_store_needles', help: 'Live needles on this store' }, (g, s) =>
      g.set(s.needleCount),
    );
    gauge(
      { name: 'haystack_store_used_bytes', help: 'Bytes of volume and index files on this store' },
      (g, s) => g.set(s.usedBytes),
    );
    gauge(
      { name: 'haystack_store_capacity_bytes', help: 'Size of the file system holding the data directory' },
      (g, s) => g.set(s.capacityBytes),
    );
    gauge(
      { name: 'haystack_store_free_bytes', help: 'Bytes available to this store on its file system' },
      (g, s) => g.set(s.freeBytes),
    );
    gauge(
      {
        name: 'haystack_store_writable',
        help: '1 when a new blob can be written (a volume can take it or one can be created)',
      },
      (g, s) => g.set(s.writable ? 1 : 0),
    );

    const fsync = new Histogram({
      name: 'haystack_store_fsync_duration_seconds',
      help: 'Duration of one group commit: fdatasync of the volume, index append and fdatasync of the index',
      buckets: FSYNC_BUCKETS,
      registers,
    });
    const commits = new Counter({
      name: 'haystack_store_group_commits_total',
      help: 'Group commits, by outcome (ok, failed)',
      labelNames: ['outcome'],
      registers,
    });
    const committed = new Counter({
      name: 'haystack_store_group_commit_needles_total',
      help: 'Needle and tombstone records made durable by group commits (divide by commits for the batch size)',
      registers,
    });
    const compactions = new Counter({
      name: 'haystack_store_compactions_total',
      help: 'Volume compactions, by outcome (ok, failed)',
      labelNames: ['outcome'],
      registers,
    });
    const compactionSeconds = new Histogram({
      name: 'haystack_store_compaction_duration_seconds',
      help: 'Duration of one successful volume compaction',
      buckets: COMPACTION_BUCKETS,
      registers,
    });
    const reclaimed = new Counter({
      name: 'haystack_store_compaction_reclaimed_bytes_total',
      help: 'Bytes freed by compactions (volume size before minus after)',
      registers,
    });
    const scrubs = new Counter({
      name: 'haystack_store_scrubs_total',
      help: 'Volume scrubs completed',
      registers,
    });
    const scrubbed = new Counter({
      name: 'haystack_store_scrub_checked_needles_total',
      help: 'Needles verified by scrubs (header, footer and data CRC32C)',
      registers,
    });
    const corrupt = new Counter({
      name: 'haystack_store_scrub_corrupt_needles_total',
      help: 'Corrupt needles found by scrubs; current = served blob ids (repaired by the replication manager), superseded = never served',
      labelNames: ['kind'],
      registers,
    });
    const lastScrub = new Gauge({
      name: 'haystack_store_last_scrub_timestamp_seconds',
      help: 'Unix time of the last completed scrub of a volume',
      labelNames: ['volume'],
      registers,
    });
    for (const o of ['ok', 'failed']) {
      commits.inc({ outcome: o }, 0);
      compactions.inc({ outcome: o }, 0);
    }
    for (const k of ['current', 'superseded']) corrupt.inc({ kind: k }, 0);

    // Erasure-coded shards of the cold tier (the shard engine's totals, recounted at most every 2 s).
    const shardTotals = () => this.shards?.totals().catch(() => undefined);
    const shardGauge = (name: string, help: string, pick: (t: ShardTotals) => number) =>
      new Gauge({
        name,
        help,
        registers,
        async collect() {
          const t = await shardTotals();
          this.set(t ? pick(t) : 0);
        },
      });
    shardGauge(
      'haystack_store_shards',
      'Erasure-coded shards held (cold tier; orphans included until collected)',
      (t) => t.count,
    );
    shardGauge('haystack_store_shard_bytes', 'Bytes of the erasure-coded shards held', (t) => t.bytes);

    this.hooks = {
      onGroupCommit: (_volumeId, seconds, items, ok) => {
        commits.inc({ outcome: ok ? 'ok' : 'failed' });
        if (!ok) return;
        fsync.observe(seconds);
        committed.inc(items);
      },
      onCompaction: (_volumeId, outcome) => {
        if ('error' in outcome) {
          compactions.inc({ outcome: 'failed' });
          return;
        }
        const r = outcome.result;
        compactions.inc({ outcome: 'ok' });
        compactionSeconds.observe(r.durationMs / 1000);
        reclaimed.inc(Math.max(0, r.bytesBefore - r.bytesAfter));
      },
      onScrub: (volumeId, report) => {
        scrubs.inc();
        scrubbed.inc(report.needlesChecked);
        for (const c of report.corrupt) corrupt.inc({ kind: c.superseded ? 'superseded' : 'current' });
        lastScrub.set({ volume: String(volumeId) }, Date.now() / 1000);
      },
    };
  }

  /** Starts reading gauges from `store` (open it with `hooks` first). */
  attach(store: Store): void {
    this.store = store;
  }

  /** The shard engine, for `haystack_store_shards` and `haystack_store_shard_bytes`. */
  attachShards(shards: ShardStore): void {
    this.shards = shards;
  }
}
