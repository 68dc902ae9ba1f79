import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { type RunAuditResponse, TaskKind } from '../../gen/haystack/v1/replication_pb.js';
import { AntiEntropy } from './anti-entropy.js';
import { Backfill } from './backfill.js';
import { BlobLayout } from './blob-layout.js';
import { type Evaluation, NOTHING } from './blob-planner.js';
import { ColdTier } from './cold-tier.js';
import { StandbyError } from './errors.js';
import { HeatTracker } from './heat.js';
import { type HotBlob, hotBlobList } from './hot-blobs.js';
import { HotReplicas } from './hot-replicas.js';
import { Leadership } from './leadership.js';
import type { ManagerDeps, ManagerEnv, ManagerEvents } from './manager-env.js';
import { followMetadata } from './metadata-follower.js';
import { MetadataMirror, type MirrorChange } from './mirror.js';
import { Monitor } from './monitor.js';
import type { Task, TaskQueue } from './queue.js';
import { TaskError } from './store-calls.js';
import { TaskRunner } from './task-runner.js';

export type { ManagerDeps, ManagerEvents } from './manager-env.js';
export type { AuditResult } from './monitor.js';
export type { StoreCalls } from './store-calls.js';
export { TaskError } from './store-calls.js';

/**
 * The replication manager, as wiring: the metadata log (metadata-follower.ts) and
 * ReportAccess heat come in; the lease (leadership.ts) decides whether this
 * instance acts; the loops (monitor.ts) and the task queue (task-runner.ts) drive
 * the verbs of the layout in force: per blob in the v1 layout (blob-planner.ts,
 * blob-copy.ts, blob-remove.ts, blob-repair.ts, orphan-gc.ts), as extras of
 * placement groups in placement mode (hot-replicas.ts, backfill.ts, anti-entropy.ts).
 * The standby instance follows the metadata and waits.
 */
export class ReplicationManager {
  readonly heat: HeatTracker;
  readonly mirror = new MetadataMirror();
  readonly hot: HotReplicas;
  readonly backfill: Backfill;
  readonly antiEntropy: AntiEntropy;
  readonly monitor: Monitor;
  /** The erasure-coded tier (EC_ENABLED, placement mode); undefined without shard clients. */
  readonly cold: ColdTier | undefined;
  /** The v1 layout (one directory record per blob). */
  readonly blobs: BlobLayout;
  /** Whether this instance acts: the lease, its term, the ReportAccess streams to end when it is lost. */
  readonly lead: Leadership;
  private readonly runner: TaskRunner;
  private readonly stopCtl = new AbortController();
  private readonly now: () => number;
  private readonly events: ManagerEvents;

  constructor(private readonly deps: ManagerDeps) {
    const { cfg, log } = deps;
    this.now = deps.now ?? Date.now;
    this.events = deps.events ?? {};
    this.heat = new HeatTracker({
      alpha: cfg.ewmaAlpha,
      periodMs: cfg.ewmaPeriodMs,
      stalenessMs: cfg.statsStalenessMs,
      maxTrackedBlobs: cfg.maxTrackedBlobs,
    });
    this.lead = new Leadership(deps.lease, {
      activate: (term, signal) => {
        this.runner.fresh();
        this.cold?.activate(this.now());
        log.info({ term: String(term) }, 'replication manager active');
        this.events.onActiveChange?.(true);
        void this.monitor.run(signal);
      },
      deactivate: (reason) => {
        this.runner.stop();
        this.blobs.planner.reset();
        this.hot.reset();
        log.warn({ reason }, 'replication manager standing by');
        this.events.onActiveChange?.(false);
      },
    });
    this.runner = new TaskRunner({
      cfg,
      log,
      events: this.events,
      now: this.now,
      acting: () => this.lead.acting(),
      active: () => this.active,
      execute: (t) => this.execute(t),
      avoid: (blobId, storeId, until) =>
        (this.placementMode ? this.hot : this.blobs).avoidFor(blobId, storeId, until),
      after: (blobId, now) => this.evaluate(blobId, now),
    });
    const env = this.env();
    this.hot = new HotReplicas(env);
    this.backfill = new Backfill(env);
    this.antiEntropy = new AntiEntropy(env);
    this.blobs = new BlobLayout(env, (storeId, blobId) => this.reportCorruption(storeId, [blobId]));
    this.cold = deps.shardStores ? new ColdTier(env, deps.shardStores, this.events) : undefined;
    this.monitor = new Monitor(env, {
      planner: this.blobs.planner,
      hot: this.hot,
      backfill: this.backfill,
      antiEntropy: this.antiEntropy,
      evaluate: (id, now) => this.evaluate(id, now),
      reportCorruption: (s, ids) => this.reportCorruption(s, ids),
      gc: async () => (await this.blobs.orphans.pass()) + ((await this.cold?.collectOrphans()) ?? 0),
      coolSweep: () => this.cold?.sweep() ?? Promise.resolve(0),
      shardRepair: (scrub) => this.cold?.repair(scrub) ?? Promise.resolve(0),
    });
  }

  private env(): ManagerEnv {
    const { cfg, log, directory } = this.deps;
    return {
      cfg,
      log,
      directory,
      mirror: this.mirror,
      heat: this.heat,
      events: this.events,
      queue: () => this.runner.queue,
      store: (s) => this.deps.stores(s),
      active: () => this.active,
      acting: () => this.lead.acting(),
      ensureActing: () => {
        if (!this.lead.acting()) throw new TaskError('lease lost', { storeFault: false, retryable: false });
      },
      placementMode: () => this.placementMode,
      term: () => this.lead.term,
      signal: () => this.lead.signal(),
      now: () => this.now(),
      monotonic: this.deps.monotonic ?? (() => performance.now()),
      ctx: (now) => ({
        stores: this.mirror.stores,
        load: (id) => this.runner.queue.runningOn(id),
        blocked: (id) => this.runner.queue.isBlocked(id, now),
      }),
      exclusive: (blobId, storeId, fn) => this.runner.exclusive(blobId, storeId, fn),
      pump: () => this.runner.pump(),
    };
  }

  // ---- lifecycle and state --------------------------------------------------------------

  start(): void {
    void followMetadata({
      directory: this.deps.directory,
      mirror: this.mirror,
      log: this.deps.log,
      managerId: this.deps.cfg.managerId,
      stop: this.stopCtl.signal,
      onSnapshot: () => {
        this.blobs.planner.onSnapshot();
        this.backfill.forgetTimes();
        if (this.active) this.monitor.pass('snapshot');
      },
      onChange: (c) => this.onChange(c),
    });
    this.lead.start();
  }

  async stop(): Promise<void> {
    this.stopCtl.abort();
    this.backfill.stop();
    await this.lead.stop();
  }

  get active(): boolean {
    return this.lead.active;
  }

  get queue(): TaskQueue {
    return this.runner.queue;
  }

  /** True once the directory maps placement groups (no per-blob records, extras only). */
  get placementMode(): boolean {
    return this.mirror.placement.enabled;
  }

  // ---- inputs: the metadata log, heat, corruption reports ------------------------------

  private onChange(c: MirrorChange): void {
    const now = this.now();
    if (c.type === 'blob') {
      const b = this.mirror.blob(c.blobId);
      if (!b) return;
      this.blobs.planner.onBlobChanged(b);
      if (this.active) this.monitor.markDirty(c.blobId);
    } else if (c.type === 'blob-deleted') {
      this.queue.cancelBlob(c.blobId, now, (t) => t.kind !== TaskKind.COLLECT);
      this.heat.forget(c.blobId);
      this.blobs.forget(c.blobId);
    } else if (c.type === 'placement') {
      this.backfill.noteMembers(c.groups);
      if (this.active && this.backfill.joining().length > 0) this.monitor.kickBackfill();
    } else if (c.type === 'extras') {
      this.hot.onExtrasChanged(c.blobId);
      if (this.active) this.monitor.markDirty(c.blobId);
    } else if (c.type === 'store' && c.previous !== c.health) {
      // Tracked on a standby too: a takeover then waits only what is left of the settle time.
      this.backfill.noteHealth(c.storeId, c.health, c.previous);
      if (!this.active) return;
      if (!this.placementMode) {
        this.blobs.planner.onStoreHealth(c.storeId, c.health, c.previous, (id) => this.monitor.markDirty(id));
      } else if (c.health === StoreHealth.HEALTHY && this.backfill.joining().length > 0) {
        // A store back up may be a JOINING member to catch up (the directory demotes a DOWN member).
        this.monitor.kickBackfill();
      }
    }
  }

  /** One ReportAccess batch. */
  report(reporterId: string, intervalMs: number, counts: Iterable<readonly [string, number]>): void {
    const now = this.now();
    const touched = this.heat.record(reporterId, intervalMs, counts, now);
    for (const id of touched) this.monitor.markDirty(id);
    if (this.active) this.cold?.onHeat(touched, now);
    this.events.onReport?.(reporterId, touched.length);
  }

  /** Corrupt needles reported by a store (scrub, read, or a copy's source); tasks enqueued. */
  reportCorruption(storeId: string, blobIds: string[]): number {
    if (!this.active) throw new StandbyError();
    const now = this.now();
    let n = 0;
    if (this.placementMode) n = this.hot.reportCorruption(storeId, blobIds);
    else for (const id of blobIds) n += this.blobs.planner.markCorrupt(storeId, id, now);
    this.runner.pump();
    return n;
  }

  // ---- per-blob views and the verbs, in the layout in force ----------------------------

  /** See hot-blobs.ts. */
  hotBlobs(now = this.now()): HotBlob[] {
    const placed = this.placementMode;
    return hotBlobList(
      this.heat.hottest(Number.POSITIVE_INFINITY, now, this.deps.cfg.accessRateThreshold),
      placed ? this.hot.watched() : this.blobs.planner.watchedIds(),
      (id) => (placed ? this.hot.targetOf(id, now) : (this.mirror.blob(id)?.targetReplicaCount ?? 0)),
      (id) => this.heat.rate(id, now),
      this.deps.cfg.defaultReplicaCount,
    );
  }

  /** Plans one blob; nothing on a standby instance. */
  evaluate(blobId: string, now: number): Evaluation {
    if (!this.active) return { ...NOTHING };
    if (this.placementMode) return { ...this.hot.evaluate(blobId, now), unavailable: false };
    return this.blobs.planner.evaluate(blobId, now);
  }

  /** Runs one task in the layout in force. */
  execute(t: Task): Promise<void> {
    return this.placementMode ? this.hot.execute(t) : this.blobs.execute(t);
  }

  audit(): Promise<RunAuditResponse> {
    return this.monitor.audit();
  }
}
