import { create } from '@bufbuild/protobuf';
import { ConnectError } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { type RunAuditResponse, RunAuditResponseSchema } from '../../gen/haystack/v1/replication_pb.js';
import { sleep } from '../common/sleep.js';
import type { AntiEntropy } from './anti-entropy.js';
import type { Backfill } from './backfill.js';
import type { BlobPlanner, Evaluation } from './blob-planner.js';
import { StandbyError } from './errors.js';
import type { HotReplicas } from './hot-replicas.js';
import type { ManagerEnv } from './manager-env.js';

export interface AuditResult {
  blobsChecked: number;
  underReplicated: number;
  overReplicated: number;
  unavailable: number;
  tasksEnqueued: number;
}

/** The parts the loops drive, and the manager's per-blob entry points. */
export interface MonitorParts {
  planner: BlobPlanner;
  hot: HotReplicas;
  backfill: Backfill;
  antiEntropy: AntiEntropy;
  /** Evaluates one blob in the layout in force (v1 records or placement groups). */
  evaluate(blobId: string, now: number): Evaluation;
  reportCorruption(storeId: string, blobIds: string[]): number;
  /** One orphan collection pass (orphan-gc.ts); tasks enqueued. */
  gc(): Promise<number>;
  /** One cold-tier sweep (cold-tier.ts): blobs encoded. */
  coolSweep(): Promise<number>;
  /** Cold-tier shard repair (cold-tier.ts): joining EC members rebuilt; with scrub, every shard checked. */
  shardRepair(scrub: boolean): Promise<number>;
}

/**
 * The active instance's loops (run() starts them; they end with its signal):
 *
 * - tick (STATS_REPORT_INTERVAL / 2, within 200 ms..5 s): re-evaluates blobs whose
 *   heat or metadata changed (markDirty) and the raised or cooling ones;
 * - monitoring (MONITORING_INTERVAL): store stats from the directory, and every
 *   blob below its minimum or its target; placement mode: backfill of JOINING members;
 * - orphan GC (GC_INTERVAL), scrub of every HEALTHY store (SCRUB_INTERVAL, 0 = off),
 *   anti-entropy rounds (ANTI_ENTROPY_INTERVAL, placement mode), the nightly audit
 *   (NIGHTLY_AUDIT_HOUR, local time, once a day); the cold tier's sweep
 *   (EC_SWEEP_INTERVAL, EC_ENABLED, placement mode: cold-tier.ts);
 * - pass: every blob once (takeover, snapshot, audit).
 *
 * A failed round is logged and the loop goes on. audit() throws StandbyError on
 * a standby instance.
 */
export class Monitor {
  private readonly dirty = new Set<string>();
  private lastAuditDay = '';
  lastAudit: (AuditResult & { durationMs: number; at: number }) | undefined;

  constructor(
    private readonly env: ManagerEnv,
    private readonly parts: MonitorParts,
  ) {}

  markDirty(blobId: string): void {
    this.dirty.add(blobId);
  }

  /** Starts the loops once the mirror holds a whole view of the metadata. */
  async run(signal: AbortSignal): Promise<void> {
    const { cfg, mirror } = this.env;
    const placement = () => this.env.placementMode();
    while (!mirror.loaded && !signal.aborted) await sleep(50, signal);
    if (signal.aborted) return;
    await this.refreshStores().catch(() => {});
    this.pass('takeover');
    const tickMs = Math.min(5_000, Math.max(200, Math.floor(cfg.statsReportIntervalMs / 2)));
    void this.every(tickMs, signal, () => this.tick());
    void this.every(cfg.monitoringIntervalMs, signal, () => this.monitor());
    void this.every(60_000, signal, () => this.maybeNightlyAudit());
    void this.every(cfg.gcIntervalMs, signal, () => this.parts.gc());
    if (placement()) this.kickBackfill();
    void this.every(cfg.monitoringIntervalMs, signal, () => placement() && this.parts.backfill.runAll());
    void this.every(
      cfg.antiEntropyIntervalMs,
      signal,
      () => placement() && this.parts.antiEntropy.round(cfg.antiEntropyGroupsPerRound),
    );
    if (cfg.scrubIntervalMs > 0) void this.every(cfg.scrubIntervalMs, signal, () => this.scrubAll());
    if (cfg.ec.enabled) {
      void this.every(cfg.ec.sweepIntervalMs, signal, () => placement() && this.parts.coolSweep());
      void this.every(cfg.monitoringIntervalMs, signal, () => placement() && this.parts.shardRepair(false));
      if (cfg.scrubIntervalMs > 0) {
        void this.every(cfg.scrubIntervalMs, signal, () => placement() && this.parts.shardRepair(true));
      }
    }
  }

  private async every(ms: number, signal: AbortSignal, fn: () => unknown): Promise<void> {
    while (!signal.aborted) {
      await sleep(ms, signal);
      if (signal.aborted) return;
      try {
        await fn();
      } catch (err) {
        this.env.log.warn(
          { err: err instanceof Error ? err.message : String(err) },
          'background pass failed',
        );
      }
    }
  }

  private watched(): Iterable<string> {
    return this.env.placementMode() ? this.parts.hot.watched() : this.parts.planner.watchedIds();
  }

  /** Re-evaluates blobs whose heat or metadata changed, and raised or cooling blobs. */
  tick(): void {
    const env = this.env;
    if (!env.active()) return;
    const now = env.now();
    const dropped = env.heat.sweep(now);
    const v1 = this.parts.planner.watchedIds();
    for (const id of dropped) if (v1.has(id)) this.dirty.add(id);
    const ids = new Set([...this.dirty, ...this.watched()]);
    this.dirty.clear();
    for (const id of ids) this.parts.evaluate(id, now);
    env.pump();
  }

  /** Evaluates every live blob (audit, takeover, snapshot). */
  pass(reason: string): AuditResult {
    const env = this.env;
    const r: AuditResult = {
      blobsChecked: 0,
      underReplicated: 0,
      overReplicated: 0,
      unavailable: 0,
      tasksEnqueued: 0,
    };
    if (!env.active()) return r;
    const now = env.now();
    const ids = env.placementMode()
      ? new Set([...this.parts.hot.watched(), ...env.heat.blobIds()])
      : (function* () {
          for (const b of env.mirror.liveBlobs()) yield b.blobId;
        })();
    for (const id of ids) {
      const e = this.parts.evaluate(id, now);
      r.blobsChecked++;
      if (e.under) r.underReplicated++;
      if (e.over) r.overReplicated++;
      if (e.unavailable) r.unavailable++;
      r.tasksEnqueued += e.enqueued;
    }
    env.log.info({ reason, ...r }, 'replication pass');
    env.pump();
    return r;
  }

  /** Full audit (RunAudit and nightly). */
  async audit(): Promise<RunAuditResponse> {
    if (!this.env.active()) throw new StandbyError();
    await this.refreshStores().catch(() => {});
    const started = performance.now();
    const r = this.pass('audit');
    if (this.env.placementMode()) {
      // Placement mode: extras of deleted blobs, every group's digests, joining members.
      const swept = await this.parts.hot.sweepDeleted();
      const round = await this.parts.antiEntropy.round(Number.MAX_SAFE_INTEGER);
      this.kickBackfill();
      r.overReplicated += swept;
      r.tasksEnqueued += swept + round.copies;
    }
    const durationMs = Math.round(performance.now() - started);
    this.lastAudit = { ...r, durationMs, at: this.env.now() };
    return create(RunAuditResponseSchema, {
      blobsChecked: BigInt(r.blobsChecked),
      underReplicated: BigInt(r.underReplicated),
      overReplicated: BigInt(r.overReplicated),
      unavailable: BigInt(r.unavailable),
      tasksEnqueued: BigInt(r.tasksEnqueued),
      durationMs: BigInt(durationMs),
    });
  }

  /** Store stats refresh and a scan for blobs below their minimum or target. */
  async monitor(): Promise<void> {
    const env = this.env;
    await this.refreshStores().catch((err: unknown) => {
      env.log.debug({ err: ConnectError.from(err).message }, 'cluster status unavailable');
    });
    const now = env.now();
    let urgent = 0;
    for (const b of env.mirror.liveBlobs()) {
      const n = this.parts.planner.liveHolders(b).length;
      if (n < env.cfg.minReplicaCount || n < b.targetReplicaCount)
        urgent += this.parts.evaluate(b.blobId, now).enqueued;
    }
    if (urgent > 0) env.log.info({ enqueued: urgent }, 'monitoring pass');
    env.pump();
  }

  kickBackfill(): void {
    this.parts.backfill
      .runAll()
      .catch((err: unknown) => this.env.log.warn({ err: String(err) }, 'backfill run failed'));
  }

  async refreshStores(): Promise<void> {
    const status = await this.env.directory.clusterStatus();
    for (const s of status.stores) this.env.mirror.refreshStore(s);
  }

  private async maybeNightlyAudit(): Promise<void> {
    const d = new Date(this.env.now());
    const day = d.toDateString();
    if (d.getHours() === this.env.cfg.nightlyAuditHour && this.lastAuditDay !== day) {
      this.lastAuditDay = day;
      await this.audit();
    }
  }

  /** Asks every healthy store to scrub and repairs what they report. */
  async scrubAll(): Promise<void> {
    const env = this.env;
    for (const s of env.mirror.stores.values()) {
      if (!env.acting() || s.health !== StoreHealth.HEALTHY) continue;
      try {
        const res = await env.store(s).scrub({ volumeId: 0 }, { signal: env.signal() });
        // A superseded needle is never served (the store took a fresh copy since): nothing to repair.
        const ids = res.corrupt.filter((c) => !c.superseded && c.blobId.length > 0).map((c) => c.blobId);
        if (ids.length > 0 && env.active()) this.parts.reportCorruption(s.storeId, ids);
      } catch (err) {
        env.log.debug({ store: s.storeId, err: ConnectError.from(err).message }, 'scrub failed');
      }
    }
  }
}
