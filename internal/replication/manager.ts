import { create } from '@bufbuild/protobuf';
import { type Client, Code, ConnectError } from '@connectrpc/connect';
import { type BlobMeta, StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { StoreRecord } from '../../gen/haystack/v1/metadata_pb.js';
import {
  type RunAuditResponse,
  RunAuditResponseSchema,
  TaskKind,
  TaskPriority,
  TaskState,
} from '../../gen/haystack/v1/replication_pb.js';
import type { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { KeyLock } from '../common/key-lock.js';
import { sleep } from '../common/sleep.js';
import type { LeaseKeeper } from '../lease/lease-keeper.js';
import type { Logger } from '../server/logger.js';
import type { ReplicationConfig } from './config.js';
import type { DirectoryCalls } from './directory-api.js';
import { HeatTracker } from './heat.js';
import { LogGapError, MetadataMirror, type MirrorChange } from './mirror.js';
import {
  chooseSource,
  chooseTargets,
  chooseVictim,
  isLive,
  type PlacementContext,
  type StoreView,
} from './placement.js';
import { decideTarget } from './policy.js';
import { type Task, TaskQueue } from './queue.js';

/** The StoreService calls the manager makes. */
export type StoreCalls = Pick<Client<typeof StoreService>, 'replicate' | 'delete' | 'scrub' | 'listNeedles'>;

/** A task attempt that failed, with how the queue should treat it. */
export class TaskError extends Error {
  constructor(
    message: string,
    readonly o: { storeFault: boolean; retryable: boolean },
  ) {
    super(message);
    this.name = 'TaskError';
  }
}

/** Codes that blame the store called (its breaker counts them). */
const STORE_FAULTS = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Unknown,
  Code.Internal,
  Code.ResourceExhausted,
  Code.Canceled,
]);

const pairKey = (blobId: string, storeId: string) => `${blobId}\u0000${storeId}`;

export interface ManagerEvents {
  onActiveChange?(active: boolean): void;
  onTaskFinished?(task: Task, outcome: 'done' | 'retry' | 'failed'): void;
  onReport?(reporterId: string, blobs: number): void;
  onCollected?(storeId: string, blobId: string): void;
  onRepair?(storeId: string, blobId: string): void;
}

export interface ManagerDeps {
  cfg: ReplicationConfig;
  log: Logger;
  directory: DirectoryCalls;
  /** StoreService client for an address. */
  stores: (address: string) => StoreCalls;
  /** The lease keeper; undefined runs always active (single instance without Redis). */
  lease: LeaseKeeper | undefined;
  events?: ManagerEvents;
  now?: () => number;
}

export interface AuditResult {
  blobsChecked: number;
  underReplicated: number;
  overReplicated: number;
  unavailable: number;
  tasksEnqueued: number;
}

/**
 * The replication manager: follows the directory's metadata log, turns heat into
 * targets, plans and runs copies, removals, repairs and collections. Only the
 * instance holding the lease acts; the other follows the metadata and waits.
 */
export class ReplicationManager {
  readonly heat: HeatTracker;
  readonly mirror = new MetadataMirror();
  queue: TaskQueue;
  active = false;
  term = 0n;
  /** Report streams open on this instance (ended when it stops being active). */
  private readonly streams = new Set<AbortController>();
  private readonly coolSince = new Map<string, number>();
  /** Target commits sent to the directory and not yet seen in the log. */
  private readonly pendingTarget = new Map<string, number>();
  /** Blobs whose target is raised or that are cooling: re-evaluated every tick. */
  private readonly watched = new Set<string>();
  private readonly dirty = new Set<string>();
  /** blob → log index of a change this instance committed and the mirror has not applied yet. */
  private readonly settling = new Map<string, bigint>();
  /** blob → stores known to hold a corrupt copy. */
  private readonly corrupt = new Map<string, Set<string>>();
  /**
   * blob → stores that refused a copy with ALREADY_EXISTS (they hold other content
   * under the id), so placement skips them. A tombstone is no refusal: a copy
   * supersedes it. Bounded; a manager that takes over relearns it from the same refusal.
   */
  private readonly refused = new Map<string, Set<string>>();
  private refusedCount = 0;
  /** blob → store → time until which a copy there is not tried again (it just failed). */
  private readonly avoid = new Map<string, Map<string, number>>();
  /**
   * One side effect at a time per (blob, store): a copy onto the store (Replicate,
   * then its commit) and a tombstone sent to it (removal, repair, collection) never
   * interleave, so no tombstone lands between a copy and its commit.
   */
  private readonly pairs = new KeyLock();
  /** (blob, store) → when the last copy there ended; collection leaves the pair alone for GC_GRACE_PERIOD. */
  private readonly copiedAt = new Map<string, number>();
  private readonly stopCtl = new AbortController();
  private activeCtl = new AbortController();
  private wakeTimer: NodeJS.Timeout | undefined;
  private readonly now: () => number;
  private generation = 0;
  private lastAuditDay = '';
  lastAudit: (AuditResult & { durationMs: number; at: number }) | undefined;
  batches = 0;
  private readonly cfg: ReplicationConfig;
  private readonly log: Logger;

  constructor(private readonly deps: ManagerDeps) {
    this.cfg = deps.cfg;
    this.log = deps.log;
    this.now = deps.now ?? Date.now;
    this.heat = new HeatTracker({
      alpha: this.cfg.ewmaAlpha,
      periodMs: this.cfg.ewmaPeriodMs,
      stalenessMs: this.cfg.statsStalenessMs,
      maxTrackedBlobs: this.cfg.maxTrackedBlobs,
    });
    this.queue = this.newQueue();
  }

  private newQueue(): TaskQueue {
    const c = this.cfg;
    return new TaskQueue(
      {
        retries: c.taskRetries,
        backoffMs: c.retryBackoffMs,
        backoffMaxMs: c.retryBackoffMaxMs,
        breakerThreshold: c.breakerThreshold,
        breakerDecayMs: c.breakerDecayMs,
        breakerOpenMs: c.breakerOpenMs,
        perStoreConcurrency: c.perStoreConcurrency,
        copyWorkers: c.replicationWorkers,
        removeWorkers: c.deReplicationWorkers,
      },
      `${c.managerId}-${++this.generation}-`,
    );
  }

  // ---- lifecycle -------------------------------------------------------------

  start(): void {
    void this.follow();
    const lease = this.deps.lease;
    if (!lease) {
      this.activate(0n);
    } else {
      lease.on((e) => {
        if (e.type === 'acquired') this.activate(e.term);
        else if (e.type === 'lost') this.deactivate(e.reason);
      });
      lease.start();
    }
  }

  async stop(): Promise<void> {
    this.stopCtl.abort();
    this.deactivate('shutting down');
    await this.deps.lease?.stop();
  }

  /** True while this instance may act (lease held and locally valid). */
  acting(): boolean {
    return this.active && (this.deps.lease ? this.deps.lease.isValid() : true);
  }

  private activate(term: bigint): void {
    if (this.active) return;
    this.active = true;
    this.term = term;
    this.activeCtl = new AbortController();
    this.queue = this.newQueue();
    this.log.info({ term: String(term) }, 'replication manager active');
    this.deps.events?.onActiveChange?.(true);
    void this.runActive(this.activeCtl.signal);
  }

  private deactivate(reason: string): void {
    if (!this.active) return;
    this.active = false;
    this.activeCtl.abort();
    this.queue.clear(this.now());
    this.pendingTarget.clear();
    for (const s of this.streams) s.abort();
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    this.log.warn({ reason }, 'replication manager standing by');
    this.deps.events?.onActiveChange?.(false);
  }

  /** Registers an open ReportAccess stream; the signal fires when it must end. */
  openStream(): AbortController {
    const c = new AbortController();
    this.streams.add(c);
    return c;
  }

  closeStream(c: AbortController): void {
    this.streams.delete(c);
  }

  // ---- following the metadata log ---------------------------------------------

  private async follow(): Promise<void> {
    let backoff = 100;
    while (!this.stopCtl.signal.aborted) {
      const ctl = new AbortController();
      const onStop = () => ctl.abort();
      this.stopCtl.signal.addEventListener('abort', onStop, { once: true });
      const from = this.mirror.loaded ? this.mirror.appliedIndex + 1n : 0n;
      const { address, stream } = this.deps.directory.watch(from, this.cfg.managerId, ctl.signal);
      try {
        for await (const msg of stream) {
          backoff = 100;
          if (msg.msg.case === 'snapshot') {
            this.mirror.applySnapshot(msg.msg.value);
            this.log.info(
              { directory: address, index: String(msg.msg.value.index) },
              'metadata snapshot loaded',
            );
            this.onSnapshot();
          } else if (msg.msg.case === 'entries') {
            for (const e of msg.msg.value.entries) this.onChange(this.mirror.apply(e));
          }
        }
      } catch (err) {
        if (err instanceof LogGapError) {
          this.log.warn({ err: err.message }, 'metadata gap: asking for a snapshot');
          this.mirror.loaded = false;
        } else if (!this.stopCtl.signal.aborted) {
          this.log.debug(
            { directory: address, err: ConnectError.from(err).message },
            'metadata stream ended',
          );
        }
      } finally {
        this.stopCtl.signal.removeEventListener('abort', onStop);
        ctl.abort();
      }
      if (this.stopCtl.signal.aborted) return;
      this.deps.directory.rotate();
      await sleep(backoff, this.stopCtl.signal);
      backoff = Math.min(2_000, backoff * 2);
    }
  }

  private onSnapshot(): void {
    this.watched.clear();
    for (const b of this.mirror.liveBlobs()) this.noteWatched(b);
    if (this.active) this.pass('snapshot');
  }

  private noteWatched(b: BlobMeta): void {
    if (b.targetReplicaCount > this.cfg.defaultReplicaCount || this.coolSince.has(b.blobId)) {
      this.watched.add(b.blobId);
    } else {
      this.watched.delete(b.blobId);
    }
  }

  /** Live blobs whose committed target is above the default. */
  raisedCount(): number {
    let n = 0;
    for (const id of this.watched) {
      if ((this.mirror.blob(id)?.targetReplicaCount ?? 0) > this.cfg.defaultReplicaCount) n++;
    }
    return n;
  }

  private onChange(c: MirrorChange): void {
    const now = this.now();
    switch (c.type) {
      case 'blob': {
        const b = this.mirror.blob(c.blobId);
        if (!b) return;
        if (this.pendingTarget.get(c.blobId) === b.targetReplicaCount) this.pendingTarget.delete(c.blobId);
        const bad = this.corrupt.get(c.blobId);
        if (bad) {
          for (const s of bad) if (!b.replicas.some((r) => r.storeId === s)) bad.delete(s);
          if (bad.size === 0) this.corrupt.delete(c.blobId);
        }
        this.noteWatched(b);
        if (this.active) this.markDirty(c.blobId);
        return;
      }
      case 'blob-deleted':
        this.settling.delete(c.blobId);
        this.queue.cancelBlob(c.blobId, now, (t) => t.kind !== TaskKind.COLLECT);
        this.heat.forget(c.blobId);
        this.coolSince.delete(c.blobId);
        this.watched.delete(c.blobId);
        this.corrupt.delete(c.blobId);
        this.pendingTarget.delete(c.blobId);
        this.refused.delete(c.blobId);
        this.avoid.delete(c.blobId);
        return;
      case 'store': {
        if (!this.active || c.previous === c.health) return;
        const blobs = this.mirror.blobsOn(c.storeId);
        if (c.health === StoreHealth.DOWN) {
          // Monitoring pass at once: every blob that had a replica there.
          let enqueued = 0;
          for (const id of blobs) enqueued += this.evaluate(id, now).enqueued;
          this.log.warn(
            { store: c.storeId, blobs: blobs.length, enqueued },
            'store DOWN: re-replicating its blobs',
          );
          this.pump();
        } else if (c.previous === StoreHealth.DOWN) {
          for (const id of blobs) this.markDirty(id);
        }
        return;
      }
      default:
        return;
    }
  }

  private markDirty(blobId: string): void {
    this.dirty.add(blobId);
  }

  // ---- planning -----------------------------------------------------------------

  private ctx(now: number): PlacementContext {
    return {
      stores: this.mirror.stores,
      load: (id) => this.queue.runningOn(id),
      blocked: (id) => this.queue.isBlocked(id, now),
    };
  }

  /** Stores holding a live, not-known-corrupt replica. */
  liveHolders(b: BlobMeta): string[] {
    const bad = this.corrupt.get(b.blobId);
    return b.replicas.map((r) => r.storeId).filter((s) => isLive(this.mirror.stores.get(s)) && !bad?.has(s));
  }

  /** The target the policy wants for a blob now (no side effects). */
  targetOf(b: BlobMeta, now: number): number {
    const current = this.pendingTarget.get(b.blobId) ?? b.targetReplicaCount;
    return decideTarget(
      { rate: this.heat.rate(b.blobId, now), current, coolSince: this.coolSince.get(b.blobId), now },
      this.cfg,
    ).target;
  }

  /**
   * Decides the target of one blob, commits a change of target, and enqueues the
   * copies or the removal that bring it there.
   */
  evaluate(
    blobId: string,
    now: number,
  ): { under: boolean; over: boolean; unavailable: boolean; enqueued: number } {
    const none = { under: false, over: false, unavailable: false, enqueued: 0 };
    const b = this.mirror.blob(blobId);
    if (!b || !this.active) return none;
    // Plan on a view that includes our own last change (it arrives on the stream).
    const waitFor = this.settling.get(blobId);
    if (waitFor !== undefined) {
      if (this.mirror.appliedIndex < waitFor) return none;
      this.settling.delete(blobId);
    }
    const current = this.pendingTarget.get(blobId) ?? b.targetReplicaCount;
    const d = decideTarget(
      { rate: this.heat.rate(blobId, now), current, coolSince: this.coolSince.get(blobId), now },
      this.cfg,
    );
    if (d.coolSince === undefined) this.coolSince.delete(blobId);
    else this.coolSince.set(blobId, d.coolSince);
    this.noteWatched(b);
    if (d.coolSince !== undefined) this.watched.add(blobId);
    const target = d.target;
    if (target !== b.targetReplicaCount && this.pendingTarget.get(blobId) !== target) {
      this.commitTarget(b, target);
    }

    const live = this.liveHolders(b);
    // Copies waiting for a store whose breaker is open go elsewhere instead.
    this.queue.cancelBlob(
      blobId,
      now,
      (t) =>
        t.kind === TaskKind.REPLICATE &&
        t.state !== TaskState.RUNNING &&
        this.queue.isBlocked(t.storeId, now),
    );
    const tasks = this.queue.forBlob(blobId);
    const copies = tasks.filter((t) => t.kind === TaskKind.REPLICATE || t.kind === TaskKind.REPAIR);
    const removals = tasks.filter((t) => t.kind === TaskKind.REMOVE);
    const n = live.length;
    const res = { under: n < target, over: n > target, unavailable: n === 0, enqueued: 0 };
    if (n === 0) return res;
    if (n + copies.length < target) {
      // Waiting removals are moot now.
      for (const t of removals) this.queue.cancelBlob(blobId, now, (x) => x.id === t.id);
      const need = target - n - copies.length;
      const priority =
        n < this.cfg.minReplicaCount
          ? TaskPriority.URGENT
          : target > this.cfg.defaultReplicaCount
            ? TaskPriority.HIGH
            : n < this.cfg.defaultReplicaCount
              ? TaskPriority.MEDIUM
              : TaskPriority.LOW;
      const holders = [...b.replicas.map((r) => r.storeId), ...copies.map((t) => t.storeId)];
      const targets = chooseTargets(holders, b.size, need, this.ctx(now), this.excluded(blobId, now));
      for (const s of targets) {
        const r = this.queue.enqueue(
          {
            blobId,
            storeId: s.storeId,
            kind: TaskKind.REPLICATE,
            priority,
          },
          now,
        );
        if (r.added) res.enqueued++;
      }
      if (targets.length < need) {
        this.log.debug(
          { blob: blobId, need, found: targets.length },
          'not enough eligible stores for copies',
        );
      }
    } else if (n > target && copies.length === 0 && removals.length === 0) {
      const victim = chooseVictim(live, this.ctx(now));
      if (victim) {
        const r = this.queue.enqueue(
          { blobId, storeId: victim.storeId, kind: TaskKind.REMOVE, priority: TaskPriority.LOW },
          now,
        );
        if (r.added) res.enqueued++;
      }
    }
    return res;
  }

  private commitTarget(b: BlobMeta, target: number): void {
    const blobId = b.blobId;
    this.pendingTarget.set(blobId, target);
    this.log.info({ blob: blobId, from: b.targetReplicaCount, to: target }, 'target replica count changed');
    this.deps.directory.updateReplicas({ blobId, targetReplicaCount: target }).catch((err: unknown) => {
      if (this.pendingTarget.get(blobId) === target) this.pendingTarget.delete(blobId);
      this.log.warn({ blob: blobId, err: ConnectError.from(err).message }, 'could not commit target');
    });
  }

  /** Evaluates every live blob (audit, takeover, snapshot). */
  pass(reason: string): AuditResult {
    const now = this.now();
    const r: AuditResult = {
      blobsChecked: 0,
      underReplicated: 0,
      overReplicated: 0,
      unavailable: 0,
      tasksEnqueued: 0,
    };
    if (!this.active) return r;
    for (const b of this.mirror.liveBlobs()) {
      const e = this.evaluate(b.blobId, now);
      r.blobsChecked++;
      if (e.under) r.underReplicated++;
      if (e.over) r.overReplicated++;
      if (e.unavailable) r.unavailable++;
      r.tasksEnqueued += e.enqueued;
    }
    this.log.info({ reason, ...r }, 'replication pass');
    this.pump();
    return r;
  }

  /** Full audit (RunAudit and nightly). */
  async audit(): Promise<RunAuditResponse> {
    if (!this.active)
      throw new ConnectError('this replication manager is on standby', Code.FailedPrecondition);
    await this.refreshStores().catch(() => {});
    const started = performance.now();
    const r = this.pass('audit');
    const durationMs = Math.round(performance.now() - started);
    this.lastAudit = { ...r, durationMs, at: this.now() };
    return create(RunAuditResponseSchema, {
      blobsChecked: BigInt(r.blobsChecked),
      underReplicated: BigInt(r.underReplicated),
      overReplicated: BigInt(r.overReplicated),
      unavailable: BigInt(r.unavailable),
      tasksEnqueued: BigInt(r.tasksEnqueued),
      durationMs: BigInt(durationMs),
    });
  }

  // ---- heat -----------------------------------------------------------------------

  /** One ReportAccess batch. */
  report(reporterId: string, intervalMs: number, counts: Iterable<readonly [string, number]>): void {
    const touched = this.heat.record(reporterId, intervalMs, counts, this.now());
    this.batches++;
    for (const id of touched) this.markDirty(id);
    this.deps.events?.onReport?.(reporterId, touched.length);
  }

  /** Corrupt needles reported by a store (scrub or read). */
  reportCorruption(storeId: string, blobIds: string[]): number {
    if (!this.active)
      throw new ConnectError('this replication manager is on standby', Code.FailedPrecondition);
    const now = this.now();
    let n = 0;
    for (const id of blobIds) {
      const b = this.mirror.blob(id);
      if (!b?.replicas.some((r) => r.storeId === storeId)) continue;
      let bad = this.corrupt.get(id);
      if (!bad) {
        bad = new Set();
        this.corrupt.set(id, bad);
      }
      bad.add(storeId);
      const good = this.liveHolders(b).length;
      const priority = good < this.cfg.minReplicaCount ? TaskPriority.URGENT : TaskPriority.HIGH;
      const r = this.queue.enqueue({ blobId: id, storeId, kind: TaskKind.REPAIR, priority }, now);
      if (r.added) n++;
      this.log.warn({ blob: id, store: storeId }, 'corrupt replica reported: repair enqueued');
    }
    this.pump();
    return n;
  }

  // ---- active loops -----------------------------------------------------------------

  private async runActive(signal: AbortSignal): Promise<void> {
    // Act only on a whole view of the metadata.
    while (!this.mirror.loaded && !signal.aborted) await sleep(50, signal);
    if (signal.aborted) return;
    await this.refreshStores().catch(() => {});
    this.pass('takeover');
    const tickMs = Math.min(5_000, Math.max(200, Math.floor(this.cfg.statsReportIntervalMs / 2)));
    void this.every(tickMs, signal, () => this.tick());
    void this.every(this.cfg.monitoringIntervalMs, signal, () => this.monitor());
    void this.every(60_000, signal, () => this.maybeNightlyAudit());
    void this.every(this.cfg.gcIntervalMs, signal, () => this.gc());
    if (this.cfg.scrubIntervalMs > 0)
      void this.every(this.cfg.scrubIntervalMs, signal, () => this.scrubAll());
  }

  private async every(ms: number, signal: AbortSignal, fn: () => unknown): Promise<void> {
    while (!signal.aborted) {
      await sleep(ms, signal);
      if (signal.aborted) return;
      try {
        await fn();
      } catch (err) {
        this.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'background pass failed');
      }
    }
  }

  /** Re-evaluates blobs whose heat or metadata changed, and raised or cooling blobs. */
  tick(): void {
    if (!this.active) return;
    const now = this.now();
    const dropped = this.heat.sweep(now);
    for (const id of dropped) if (this.watched.has(id)) this.dirty.add(id);
    const ids = new Set([...this.dirty, ...this.watched]);
    this.dirty.clear();
    for (const id of ids) this.evaluate(id, now);
    this.pump();
  }

  /** Store stats refresh and a scan for blobs below their minimum. */
  async monitor(): Promise<void> {
    await this.refreshStores().catch((err: unknown) => {
      this.log.debug({ err: ConnectError.from(err).message }, 'cluster status unavailable');
    });
    const now = this.now();
    let urgent = 0;
    for (const b of this.mirror.liveBlobs()) {
      const n = this.liveHolders(b).length;
      if (n < this.cfg.minReplicaCount || n < b.targetReplicaCount)
        urgent += this.evaluate(b.blobId, now).enqueued;
    }
    if (urgent > 0) this.log.info({ enqueued: urgent }, 'monitoring pass');
    this.pump();
  }

  async refreshStores(): Promise<void> {
    const status = await this.deps.directory.clusterStatus();
    for (const s of status.stores) this.mirror.refreshStore(s);
  }

  private async maybeNightlyAudit(): Promise<void> {
    const d = new Date(this.now());
    const day = d.toDateString();
    if (d.getHours() === this.cfg.nightlyAuditHour && this.lastAuditDay !== day) {
      this.lastAuditDay = day;
      await this.audit();
    }
  }

  /** Asks every healthy store to scrub and repairs what they report. */
  async scrubAll(): Promise<void> {
    for (const s of this.mirror.stores.values()) {
      if (!this.acting() || s.health !== StoreHealth.HEALTHY) continue;
      try {
        const res = await this.store(s.address).scrub({ volumeId: 0 }, { signal: this.activeCtl.signal });
        // A superseded needle is never served (the store took a fresh copy since): nothing to repair.
        const ids = res.corrupt.filter((c) => !c.superseded && c.blobId.length > 0).map((c) => c.blobId);
        if (ids.length > 0 && this.active) this.reportCorruption(s.storeId, ids);
      } catch (err) {
        this.log.debug({ store: s.storeId, err: ConnectError.from(err).message }, 'scrub failed');
      }
    }
  }

  /**
   * Garbage collection: needles on a store that no metadata references, older
   * than the grace period (so a write whose commit is in flight is never taken),
   * confirmed by the directory (VerifyBlobs) in batches, are enqueued for deletion.
   */
  async gc(): Promise<number> {
    let enqueued = 0;
    for (const s of [...this.mirror.stores.values()]) {
      if (!this.acting() || s.health !== StoreHealth.HEALTHY) continue;
      try {
        enqueued += await this.gcStore(s);
      } catch (err) {
        this.log.debug({ store: s.storeId, err: ConnectError.from(err).message }, 'gc of store failed');
      }
    }
    if (enqueued > 0) this.log.info({ enqueued }, 'garbage collection pass');
    this.pump();
    return enqueued;
  }

  private async gcStore(s: StoreRecord): Promise<number> {
    const client = this.store(s.address);
    const cutoff = this.now() - this.cfg.gcGracePeriodMs;
    let token = '';
    let batch: string[] = [];
    let enqueued = 0;
    const flush = async () => {
      if (batch.length === 0) return;
      const ids = batch;
      batch = [];
      const res = await this.deps.directory.verifyBlobs(s.storeId, ids);
      const referenced = new Set(res.referencedBlobIds);
      const now = this.now();
      for (const id of ids) {
        // Re-checked after the await: a collection must not replace a waiting copy or removal.
        if (referenced.has(id) || !this.active || this.referencedLocally(id, s.storeId)) continue;
        const r = this.queue.enqueue(
          { blobId: id, storeId: s.storeId, kind: TaskKind.COLLECT, priority: TaskPriority.LOW },
          now,
        );
        if (r.added) enqueued++;
      }
    };
    do {
      const page = await client.listNeedles(
        { pageSize: 1000, pageToken: token },
        { signal: this.activeCtl.signal },
      );
      for (const n of page.needles) {
        if (Number(n.writtenAtMs) > cutoff) continue;
        if (this.referencedLocally(n.blobId, s.storeId)) continue;
        batch.push(n.blobId);
        if (batch.length >= 5_000) await flush();
      }
      token = page.nextPageToken;
    } while (token && this.acting());
    await flush();
    return enqueued;
  }

  private referencedLocally(blobId: string, storeId: string): boolean {
    const b = this.mirror.blob(blobId);
    if (b?.replicas.some((r) => r.storeId === storeId)) return true;
    const t = this.queue.find(blobId, storeId);
    return t !== undefined && t.kind !== TaskKind.COLLECT;
  }

  // ---- running tasks ------------------------------------------------------------------

  /** Starts every task that may run now and arranges a wake-up for the rest. */
  pump(): void {
    if (!this.acting()) return;
    const now = this.now();
    for (let t = this.queue.take(now); t; t = this.queue.take(now)) void this.run(t, this.queue);
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    const at = this.queue.nextWakeAt(now);
    if (at !== undefined) {
      this.wakeTimer = setTimeout(() => this.pump(), Math.max(10, at - now));
      this.wakeTimer.unref();
    }
  }

  private async run(t: Task, queue: TaskQueue): Promise<void> {
    let outcome: 'done' | 'retry' | 'failed' = 'done';
    try {
      await this.execute(t);
      queue.complete(t.id, this.now());
    } catch (err) {
      const te =
        err instanceof TaskError
          ? err
          : new TaskError(err instanceof Error ? err.message : String(err), {
              storeFault: false,
              retryable: true,
            });
      const r = queue.fail(t.id, te.message, this.now(), te.o);
      outcome = r === 'retry' ? 'retry' : 'failed';
      if (outcome === 'failed' && t.kind === TaskKind.REPLICATE) {
        // Place the next copy elsewhere for a while instead of failing here again at once.
        this.avoidFor(t.blobId, t.storeId, this.now() + this.cfg.retryBackoffMaxMs);
      }
      this.log[outcome === 'failed' ? 'warn' : 'debug'](
        {
          task: t.id,
          kind: TaskKind[t.kind],
          blob: t.blobId,
          store: t.storeId,
          err: te.message,
          attempts: t.attempts,
        },
        outcome === 'failed' ? 'task failed' : 'task attempt failed',
      );
    }
    this.deps.events?.onTaskFinished?.(t, outcome);
    if (queue !== this.queue || !this.active) return;
    this.evaluate(t.blobId, this.now());
    this.pump();
  }

  private store(address: string): StoreCalls {
    return this.deps.stores(address);
  }

  private ensureActing(): void {
    if (!this.acting()) throw new TaskError('lease lost', { storeFault: false, retryable: false });
  }

  async execute(t: Task): Promise<void> {
    switch (t.kind) {
      case TaskKind.REPLICATE:
        return this.copy(t);
      case TaskKind.REMOVE:
        return this.remove(t);
      case TaskKind.REPAIR:
        return this.repair(t);
      case TaskKind.COLLECT:
        return this.collect(t);
      default:
        throw new TaskError(`unknown task kind ${t.kind}`, { storeFault: false, retryable: false });
    }
  }

  /** Runs `fn` alone on the (blob, store) pair (see `pairs`). */
  private async exclusive<T>(blobId: string, storeId: string, fn: () => Promise<T>): Promise<T> {
    const release = await this.pairs.acquire(pairKey(blobId, storeId));
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Copies a blob onto t.storeId and commits the new replica. */
  private copy(t: Task): Promise<void> {
    return this.exclusive(t.blobId, t.storeId, async () => {
      // Checked under the pair's lock, so a removal or copy that just ended there counts.
      const b = this.mirror.blob(t.blobId);
      if (!b) return;
      if (b.replicas.some((r) => r.storeId === t.storeId)) return;
      const now = this.now();
      if (this.liveHolders(b).length >= this.targetOf(b, now)) return; // no longer needed
      await this.copyLocked(b, t.storeId, new Set());
    });
  }

  /** Copies a blob onto targetId and commits it, alone on the (blob, target) pair. */
  private copyTo(b: BlobMeta, targetId: string, exclude: Set<string>): Promise<void> {
    return this.exclusive(b.blobId, targetId, () => this.copyLocked(b, targetId, exclude));
  }

  private async copyLocked(b: BlobMeta, targetId: string, exclude: Set<string>): Promise<void> {
    const target = this.mirror.stores.get(targetId);
    if (!target || target.health !== StoreHealth.HEALTHY) {
      throw new TaskError(`target store ${targetId} is not healthy`, { storeFault: false, retryable: false });
    }
    const bad = this.corrupt.get(b.blobId) ?? new Set<string>();
    const source = chooseSource(
      b.replicas.map((r) => r.storeId),
      this.ctx(this.now()),
      new Set([...bad, ...exclude, targetId]),
    );
    if (!source) throw new TaskError('no live replica to copy from', { storeFault: false, retryable: true });
    this.ensureActing();
    try {
      await this.replicateAndCommit(b, target, source);
    } finally {
      // Whatever the outcome, the store may hold the copy now and its commit may land late.
      this.noteCopy(b.blobId, targetId);
    }
  }

  private async replicateAndCommit(b: BlobMeta, target: StoreView, source: StoreView): Promise<void> {
    const targetId = target.storeId;
    let volumeId: number;
    try {
      const res = await this.store(target.address).replicate(
        {
          blobId: b.blobId,
          cookie: b.cookie,
          source: { storeId: source.storeId, address: source.address, zone: source.zone },
          sha256: b.sha256,
          // The store fences manager terms apart from directory terms.
          term: this.term,
        },
        { timeoutMs: this.cfg.copyTimeoutMs, signal: this.activeCtl.signal },
      );
      volumeId = res.replica?.volumeId ?? 0;
    } catch (err) {
      const ce = ConnectError.from(err);
      if (ce.code === Code.DataLoss) {
        // The source's bytes do not match the committed checksum: repair it too.
        this.reportCorruption(source.storeId, [b.blobId]);
        throw new TaskError(`source ${source.storeId} is corrupt: ${ce.rawMessage}`, {
          storeFault: false,
          retryable: true,
        });
      }
      if (ce.code === Code.AlreadyExists) {
        // The target holds other content under this id (another cookie) and keeps it.
        this.refuse(b.blobId, targetId);
        throw new TaskError(`${targetId} refuses the blob: ${ce.rawMessage}`, {
          storeFault: false,
          retryable: false,
        });
      }
      if (ce.code === Code.NotFound) {
        throw new TaskError(`source ${source.storeId} lacks the blob: ${ce.rawMessage}`, {
          storeFault: false,
          retryable: true,
        });
      }
      throw new TaskError(`replicate on ${targetId}: ${ce.rawMessage}`, {
        storeFault: STORE_FAULTS.has(ce.code),
        retryable: ce.code !== Code.FailedPrecondition,
      });
    }
    this.ensureActing();
    try {
      const res = await this.deps.directory.updateReplicas({
        blobId: b.blobId,
        add: [{ storeId: targetId, volumeId }],
      });
      this.settle(b.blobId, res.commitIndex);
    } catch (err) {
      const ce = ConnectError.from(err);
      if (ce.code === Code.NotFound) {
        // Deleted meanwhile: take the copy back.
        await this.tombstone(targetId, target.address, b.blobId);
        return;
      }
      throw new TaskError(`commit of the copy on ${targetId}: ${ce.rawMessage}`, {
        storeFault: false,
        retryable: true,
      });
    }
    this.log.info({ blob: b.blobId, from: source.storeId, to: targetId }, 'replica added');
  }

  /** Stores placement must skip for a blob: refusals, and recent failed copies. */
  private excluded(blobId: string, now: number): Set<string> {
    const out = new Set(this.refused.get(blobId));
    const av = this.avoid.get(blobId);
    if (av) {
      for (const [s, until] of av) {
        if (until > now) out.add(s);
        else av.delete(s);
      }
      if (av.size === 0) this.avoid.delete(blobId);
    }
    return out;
  }

  private avoidFor(blobId: string, storeId: string, until: number): void {
    if (this.avoid.size >= 100_000) this.avoid.clear();
    let m = this.avoid.get(blobId);
    if (!m) {
      m = new Map();
      this.avoid.set(blobId, m);
    }
    m.set(storeId, until);
  }

  private refuse(blobId: string, storeId: string): void {
    if (this.refusedCount >= 100_000) {
      this.refused.clear();
      this.refusedCount = 0;
    }
    let set = this.refused.get(blobId);
    if (!set) {
      set = new Set();
      this.refused.set(blobId, set);
    }
    if (!set.has(storeId)) {
      set.add(storeId);
      this.refusedCount++;
    }
  }

  private settle(blobId: string, index: bigint): void {
    if (index > this.mirror.appliedIndex) this.settling.set(blobId, index);
  }

  /** Removes the replica on t.storeId: metadata first, then the tombstone. */
  private async remove(t: Task): Promise<void> {
    const b = this.mirror.blob(t.blobId);
    if (!b) return;
    if (!b.replicas.some((r) => r.storeId === t.storeId)) return;
    const live = this.liveHolders(b);
    const keep = Math.max(this.targetOf(b, this.now()), this.cfg.minReplicaCount);
    if (live.length - (live.includes(t.storeId) ? 1 : 0) < keep) return; // no longer over-replicated
    if (!(await this.dropReplica(b, t.storeId, 'removal'))) return;
    this.log.info({ blob: b.blobId, store: t.storeId }, 'replica removed');
  }

  /**
   * Drops a blob's replica on a store: the metadata change commits first, then the
   * store's copy is tombstoned, both alone on the pair. False when the blob is gone
   * from the directory.
   */
  private dropReplica(b: BlobMeta, storeId: string, what: string): Promise<boolean> {
    return this.exclusive(b.blobId, storeId, async () => {
      this.ensureActing();
      try {
        const res = await this.deps.directory.updateReplicas({
          blobId: b.blobId,
          removeStoreIds: [storeId],
          expectedVersion: b.version,
        });
        this.settle(b.blobId, res.commitIndex);
      } catch (err) {
        const ce = ConnectError.from(err);
        if (ce.code === Code.NotFound) return false;
        throw new TaskError(`commit of the ${what}: ${ce.rawMessage}`, {
          storeFault: false,
          retryable: true,
        });
      }
      // Deposed meanwhile: the needle is an orphan for the next manager's GC (which
      // takes the pair's lock there) rather than a tombstone racing its copies.
      this.ensureActing();
      const s = this.mirror.stores.get(storeId);
      if (s) await this.tombstone(storeId, s.address, b.blobId);
      return true;
    });
  }

  /** Replaces a corrupt replica: drop it (metadata, then tombstone), copy from a good one. */
  private async repair(t: Task): Promise<void> {
    const b = this.mirror.blob(t.blobId);
    if (!b) return;
    const bad = this.corrupt.get(t.blobId) ?? new Set([t.storeId]);
    const holders = b.replicas.map((r) => r.storeId);
    const good = holders.filter((s) => isLive(this.mirror.stores.get(s)) && !bad.has(s));
    if (good.length === 0) {
      throw new TaskError('no good replica to repair from', { storeFault: false, retryable: true });
    }
    if (holders.includes(t.storeId)) {
      if (!(await this.dropReplica(b, t.storeId, "corrupt replica's removal"))) return;
      this.deps.events?.onRepair?.(t.storeId, b.blobId);
      this.log.warn({ blob: b.blobId, store: t.storeId }, 'corrupt replica dropped');
    }
    // Copy onto the best other store (the corrupt one only if nothing else fits).
    const remaining = holders.filter((s) => s !== t.storeId);
    const now = this.now();
    const [dest] = chooseTargets(
      remaining,
      b.size,
      1,
      this.ctx(now),
      new Set([t.storeId, ...this.excluded(b.blobId, now)]),
    );
    const destId = dest?.storeId ?? t.storeId;
    const view: BlobMeta = { ...b, replicas: b.replicas.filter((r) => r.storeId !== t.storeId) };
    try {
      await this.copyTo(view, destId, new Set([t.storeId]));
    } catch (err) {
      // The planner sees the blob below target and copies it anyway.
      this.log.warn(
        { blob: b.blobId, err: err instanceof Error ? err.message : String(err) },
        'repair copy failed',
      );
    }
    this.corrupt.get(t.blobId)?.delete(t.storeId);
  }

  /**
   * Deletes an unreferenced needle, re-checking the references first, alone on the
   * pair: no copy there can commit between the check and the tombstone.
   */
  private async collect(t: Task): Promise<void> {
    const collected = await this.exclusive(t.blobId, t.storeId, async () => {
      if (this.referencedLocally(t.blobId, t.storeId)) return false;
      // A copy's commit whose answer was lost may still land: wait out the grace period.
      if (this.copiedRecently(t.blobId, t.storeId)) return false;
      const s = this.mirror.stores.get(t.storeId);
      if (!s) return false;
      this.ensureActing();
      const res = await this.deps.directory.verifyBlobs(t.storeId, [t.blobId]);
      if (res.referencedBlobIds.includes(t.blobId) || this.referencedLocally(t.blobId, t.storeId)) {
        return false;
      }
      this.ensureActing();
      try {
        await this.store(s.address).delete({ blobId: t.blobId, term: 0n }, { timeoutMs: 10_000 });
      } catch (err) {
        const ce = ConnectError.from(err);
        throw new TaskError(`delete on ${t.storeId}: ${ce.rawMessage}`, {
          storeFault: STORE_FAULTS.has(ce.code),
          retryable: true,
        });
      }
      return true;
    });
    if (!collected) return;
    this.deps.events?.onCollected?.(t.storeId, t.blobId);
    this.log.info({ blob: t.blobId, store: t.storeId }, 'orphan needle collected');
  }

  private noteCopy(blobId: string, storeId: string): void {
    const now = this.now();
    if (this.copiedAt.size >= 10_000) {
      for (const [k, at] of this.copiedAt) if (now - at >= this.cfg.gcGracePeriodMs) this.copiedAt.delete(k);
    }
    this.copiedAt.set(pairKey(blobId, storeId), now);
  }

  private copiedRecently(blobId: string, storeId: string): boolean {
    const at = this.copiedAt.get(pairKey(blobId, storeId));
    return at !== undefined && this.now() - at < this.cfg.gcGracePeriodMs;
  }

  /**
   * Best-effort tombstone, sent under the pair's lock (an orphan left behind is
   * collected by GC later). Stops once the lease is lost, for the same reason.
   */
  private async tombstone(storeId: string, address: string, blobId: string): Promise<void> {
    for (let i = 0; i < 3 && this.acting(); i++) {
      try {
        await this.store(address).delete({ blobId, term: 0n }, { timeoutMs: 5_000 });
        return;
      } catch (err) {
        this.log.debug(
          { blob: blobId, store: storeId, err: ConnectError.from(err).message },
          'tombstone failed',
        );
        await sleep(200 * 2 ** i);
      }
    }
  }
}
