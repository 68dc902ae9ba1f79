import { ConnectError } from '@connectrpc/connect';
import { type BlobMeta, StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { TaskKind, TaskPriority, TaskState } from '../../gen/haystack/v1/replication_pb.js';
import type { CopyExclusions } from './copy-exclusions.js';
import type { ManagerEnv } from './manager-env.js';
import { chooseTargets, chooseVictim } from './placement.js';
import { decideTarget } from './policy.js';
import { liveHolders, planReplicas, type ReplicaStatus, replicaStatus } from './replica-plan.js';

/** What evaluating one blob found and did. */
export interface Evaluation extends ReplicaStatus {
  /** Tasks added to the queue. */
  enqueued: number;
}

export const NOTHING: Readonly<Evaluation> = { under: false, over: false, unavailable: false, enqueued: 0 };

/**
 * The v1 layout's per-blob planner (one directory record per blob): heat → target
 * (policy.ts) → copies or one removal (replica-plan.ts), enqueued on the manager's
 * queue. Keeps what planning needs between passes, all keyed by blob id:
 *
 * - the target committed to the directory and not yet seen in the log (pending),
 * - when a raised blob started to cool, and the blobs to re-evaluate every tick
 *   (raised or cooling),
 * - the log index of this manager's own change not yet applied by the mirror
 *   (planning waits for it, so it plans on a view that includes that change),
 * - stores known to hold a corrupt copy.
 *
 * Target commits are fire-and-forget (a failure is logged and retried at the next
 * evaluation). Never throws.
 */
export class BlobPlanner {
  private readonly coolSince = new Map<string, number>();
  private readonly pendingTarget = new Map<string, number>();
  private readonly watched = new Set<string>();
  private readonly settling = new Map<string, bigint>();
  private readonly corrupt = new Map<string, Set<string>>();

  constructor(
    private readonly env: ManagerEnv,
    private readonly exclusions: CopyExclusions,
  ) {}

  /** Blobs re-evaluated every tick: target above the default, or cooling. */
  watchedIds(): ReadonlySet<string> {
    return this.watched;
  }

  /** Stores holding a live, not-known-corrupt replica. */
  liveHolders(b: BlobMeta): string[] {
    const holders = b.replicas.map((r) => r.storeId);
    return liveHolders(holders, this.env.mirror.stores, this.corrupt.get(b.blobId));
  }

  /** Stores known to hold a corrupt copy of the blob; undefined when none was reported. */
  corruptOn(blobId: string): ReadonlySet<string> | undefined {
    return this.corrupt.get(blobId);
  }

  /** The target the policy wants for a blob now (no side effects). */
  targetOf(b: BlobMeta, now: number): number {
    return this.decide(b, now).target;
  }

  private decide(b: BlobMeta, now: number) {
    const current = this.pendingTarget.get(b.blobId) ?? b.targetReplicaCount;
    return decideTarget(
      { rate: this.env.heat.rate(b.blobId, now), current, coolSince: this.coolSince.get(b.blobId), now },
      this.env.cfg,
    );
  }

  /**
   * Decides the target of one blob, commits a change of target, and enqueues the
   * copies or the removal that bring it there.
   */
  evaluate(blobId: string, now: number): Evaluation {
    const { cfg, mirror } = this.env;
    const b = mirror.blob(blobId);
    if (!b) return { ...NOTHING };
    // Plan on a view that includes our own last change (it arrives on the stream).
    const waitFor = this.settling.get(blobId);
    if (waitFor !== undefined) {
      if (mirror.appliedIndex < waitFor) return { ...NOTHING };
      this.settling.delete(blobId);
    }
    const d = this.decide(b, now);
    if (d.coolSince === undefined) this.coolSince.delete(blobId);
    else this.coolSince.set(blobId, d.coolSince);
    this.noteWatched(b);
    if (d.coolSince !== undefined) this.watched.add(blobId);
    const target = d.target;
    if (target !== b.targetReplicaCount && this.pendingTarget.get(blobId) !== target) {
      this.commitTarget(b, target);
    }

    const queue = this.env.queue();
    const live = this.liveHolders(b);
    // Copies waiting for a store whose breaker is open go elsewhere instead.
    queue.cancelBlob(
      blobId,
      now,
      (t) =>
        t.kind === TaskKind.REPLICATE && t.state !== TaskState.RUNNING && queue.isBlocked(t.storeId, now),
    );
    const tasks = queue.forBlob(blobId);
    const copies = tasks.filter((t) => t.kind === TaskKind.REPLICATE || t.kind === TaskKind.REPAIR);
    const removals = tasks.filter((t) => t.kind === TaskKind.REMOVE);
    const res: Evaluation = { ...replicaStatus(live.length, target), enqueued: 0 };
    const plan = planReplicas(
      { live: live.length, target, copies: copies.length, removals: removals.length },
      cfg,
    );
    if (plan.action === 'copy') {
      for (const t of removals) queue.cancelBlob(blobId, now, (x) => x.id === t.id);
      const holders = [...b.replicas.map((r) => r.storeId), ...copies.map((t) => t.storeId)];
      const targets = chooseTargets(
        holders,
        b.size,
        plan.need,
        this.env.ctx(now),
        this.exclusions.excluded(blobId, now),
      );
      for (const s of targets) {
        const r = queue.enqueue(
          { blobId, storeId: s.storeId, kind: TaskKind.REPLICATE, priority: plan.priority },
          now,
        );
        if (r.added) res.enqueued++;
      }
      if (targets.length < plan.need) {
        this.env.log.debug(
          { blob: blobId, need: plan.need, found: targets.length },
          'not enough eligible stores for copies',
        );
      }
    } else if (plan.action === 'drop') {
      const victim = chooseVictim(live, this.env.ctx(now));
      if (victim) {
        const r = queue.enqueue(
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
    this.env.log.info(
      { blob: blobId, from: b.targetReplicaCount, to: target },
      'target replica count changed',
    );
    this.env.directory.updateReplicas({ blobId, targetReplicaCount: target }).catch((err: unknown) => {
      if (this.pendingTarget.get(blobId) === target) this.pendingTarget.delete(blobId);
      this.env.log.warn({ blob: blobId, err: ConnectError.from(err).message }, 'could not commit target');
    });
  }

  /** Plans wait until the mirror has applied log index `index` for the blob. */
  settle(blobId: string, index: bigint): void {
    if (index > this.env.mirror.appliedIndex) this.settling.set(blobId, index);
  }

  /**
   * Marks the blob's replica on `storeId` corrupt and enqueues its repair (URGENT
   * when the good ones are below the minimum). Returns tasks added: 0 for a blob
   * the store holds no replica of.
   */
  markCorrupt(storeId: string, blobId: string, now: number): number {
    const b = this.env.mirror.blob(blobId);
    if (!b?.replicas.some((r) => r.storeId === storeId)) return 0;
    let bad = this.corrupt.get(blobId);
    if (!bad) {
      bad = new Set();
      this.corrupt.set(blobId, bad);
    }
    bad.add(storeId);
    const good = this.liveHolders(b).length;
    const priority = good < this.env.cfg.minReplicaCount ? TaskPriority.URGENT : TaskPriority.HIGH;
    const r = this.env.queue().enqueue({ blobId, storeId, kind: TaskKind.REPAIR, priority }, now);
    this.env.log.warn({ blob: blobId, store: storeId }, 'corrupt replica reported: repair enqueued');
    return r.added ? 1 : 0;
  }

  /** The corrupt replica on `storeId` is replaced (or given up on). */
  repaired(blobId: string, storeId: string): void {
    this.corrupt.get(blobId)?.delete(storeId);
  }

  /** A metadata snapshot replaced the mirror: relearn the watched blobs. */
  onSnapshot(): void {
    this.watched.clear();
    for (const b of this.env.mirror.liveBlobs()) this.noteWatched(b);
  }

  /** The blob's record changed in the log. */
  onBlobChanged(b: BlobMeta): void {
    if (this.pendingTarget.get(b.blobId) === b.targetReplicaCount) this.pendingTarget.delete(b.blobId);
    const bad = this.corrupt.get(b.blobId);
    if (bad) {
      for (const s of bad) if (!b.replicas.some((r) => r.storeId === s)) bad.delete(s);
      if (bad.size === 0) this.corrupt.delete(b.blobId);
    }
    this.noteWatched(b);
  }

  /**
   * A store's health changed (health values of StoreHealth): every blob with a
   * replica there is planned at once when it went DOWN, and marked for the next
   * tick (`markDirty`) when it came back from DOWN.
   */
  onStoreHealth(
    storeId: string,
    health: StoreHealth,
    previous: StoreHealth | undefined,
    markDirty: (blobId: string) => void,
  ): void {
    const blobs = this.env.mirror.blobsOn(storeId);
    if (health === StoreHealth.DOWN) {
      // Monitoring pass at once: every blob that had a replica there.
      const now = this.env.now();
      let enqueued = 0;
      for (const id of blobs) enqueued += this.evaluate(id, now).enqueued;
      this.env.log.warn(
        { store: storeId, blobs: blobs.length, enqueued },
        'store DOWN: re-replicating its blobs',
      );
      this.env.pump();
    } else if (previous === StoreHealth.DOWN) {
      for (const id of blobs) markDirty(id);
    }
  }

  /** The blob was deleted: forget all about it. */
  forget(blobId: string): void {
    this.settling.delete(blobId);
    this.coolSince.delete(blobId);
    this.watched.delete(blobId);
    this.corrupt.delete(blobId);
    this.pendingTarget.delete(blobId);
  }

  /** The lease is lost: pending commits belong to the next active instance. */
  reset(): void {
    this.pendingTarget.clear();
  }

  private noteWatched(b: BlobMeta): void {
    if (b.targetReplicaCount > this.env.cfg.defaultReplicaCount || this.coolSince.has(b.blobId)) {
      this.watched.add(b.blobId);
    } else {
      this.watched.delete(b.blobId);
    }
  }
}
