import { Code, ConnectError } from '@connectrpc/connect';
import { type ColdRef, StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { TaskKind, TaskPriority } from '../../gen/haystack/v1/replication_pb.js';
import type { NeedleFacts } from '../../gen/haystack/v1/store_pb.js';
import type { StoreAt } from '../rpc/clients.js';
import { CopyExclusions } from './copy-exclusions.js';
import { copyNeedle, copyNeedleDetailed, statFirst } from './needle-copy.js';
import { isKept, isLive } from './placement.js';
import type { PlacementEnv } from './placement-env.js';
import { activeSources, membersIn, planExtras, wantedExtras } from './placement-planner.js';
import { decideTarget } from './policy.js';
import type { Task } from './queue.js';
import { replicateDataLoss, replicateError, storeCallError, TaskError } from './store-calls.js';

const MAX_REMEMBERED = 100_000;

/** One replica of a blob in placement mode, as GetBlobStatus reports it. */
export interface PlacedReplica {
  storeId: string;
  address: string;
  zone: string;
  health: StoreHealth;
  volumeId: number;
  /** 'member' (ACTIVE), 'joining' or 'extra'. */
  role: 'member' | 'joining' | 'extra';
}

/**
 * Dynamic replication in placement mode (the seed's signature, Haystack §3.4's
 * "hot photos" done by the manager): heat → target (policy.ts, unchanged) → the
 * blob's extra replicas beyond its placement group (ExtraReplicas in the
 * directory, changed with UpdateReplicas).
 *
 * - Raise: the target is committed at once (UpdateReplicas target), then each
 *   missing extra is a REPLICATE task: the blob's facts from Stat on an ACTIVE
 *   member, StoreService.Replicate keep_stamp from that member onto a non-member
 *   (planExtras), then UpdateReplicas(add, target). A store holding a tombstone of
 *   the blob (an extra removed earlier) would keep it over a keep_stamp copy, so
 *   that copy takes a fresh stamp instead (it is outside the group: no digest sees it).
 * - Cool (policy grace and hysteresis): the lower target is committed, then a REMOVE
 *   task per surplus extra, one at a time: UpdateReplicas(remove) first, so
 *   gateways stop reading there, then the tombstone after EXTRA_REMOVAL_GRACE
 *   (reads already sent there finish).
 * - A delete clears the blob's record in the directory; a copy that committed
 *   around it is found by the Stat after the commit (or by the audit's sweep) and
 *   taken back.
 * - Each copy and tombstone runs alone on its (blob, store) pair (env.exclusive).
 */
export class HotReplicas {
  private readonly coolSince = new Map<string, number>();
  /** Target commits sent and not yet seen in the log. */
  private readonly pendingTarget = new Map<string, number>();
  /** Stores copies of a blob skip for now (refused, failed, corrupt). */
  private readonly exclusions = new CopyExclusions();
  /** blob → until when it is not planned (no member holds it: never written, or deleted). */
  private readonly gone = new Map<string, number>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly env: PlacementEnv) {}

  private get placement() {
    return this.env.mirror.placement;
  }

  /** Blobs re-evaluated every tick: those with an ExtraReplicas record, and cooling ones. */
  watched(): string[] {
    return [...new Set([...this.placement.extras.keys(), ...this.coolSince.keys()])];
  }

  /** Blobs whose committed target is above their group's size. */
  raisedCount(): number {
    let n = 0;
    for (const rec of this.placement.extras.values()) {
      const g = this.placement.groupFor(rec.blobId);
      if (g && rec.targetReplicaCount > g.members.length) n++;
    }
    return n;
  }

  /** Blobs with an ExtraReplicas record whose members and live extras fall short of its target. */
  belowTargetCount(): number {
    let n = 0;
    for (const rec of this.placement.extras.values()) {
      const g = this.placement.groupFor(rec.blobId);
      const live = rec.replicas.filter((r) => isLive(this.env.mirror.stores.get(r.storeId))).length;
      if (g && g.members.length + live < rec.targetReplicaCount) n++;
    }
    return n;
  }

  private committed(blobId: string): number {
    return this.placement.extras.get(blobId)?.targetReplicaCount || this.env.cfg.defaultReplicaCount;
  }

  /** The target the policy wants for a blob now (no side effects). */
  targetOf(blobId: string, now: number): number {
    return decideTarget(
      {
        rate: this.env.heat.rate(blobId, now),
        current: this.pendingTarget.get(blobId) ?? this.committed(blobId),
        coolSince: this.coolSince.get(blobId),
        now,
      },
      this.env.cfg,
    ).target;
  }

  /** Extra replicas listed for a blob. */
  extrasOf(blobId: string): string[] {
    return (this.placement.extras.get(blobId)?.replicas ?? []).map((r) => r.storeId);
  }

  /** Forgets state made stale by a log change of the blob's record. */
  onExtrasChanged(blobId: string): void {
    const rec = this.placement.extras.get(blobId);
    const committed = rec?.targetReplicaCount || this.env.cfg.defaultReplicaCount;
    if (this.pendingTarget.get(blobId) === committed) this.pendingTarget.delete(blobId);
  }

  /** Decides a blob's target, commits a change of it, and enqueues the copies or the removal. */
  evaluate(blobId: string, now: number): { under: boolean; over: boolean; enqueued: number } {
    const res = { under: false, over: false, enqueued: 0 };
    const g = this.placement.groupFor(blobId);
    const until = this.gone.get(blobId);
    if (!g || (until !== undefined && until > now)) return res;
    if (until !== undefined) this.gone.delete(blobId);
    const committed = this.committed(blobId);
    const d = decideTarget(
      {
        rate: this.env.heat.rate(blobId, now),
        current: this.pendingTarget.get(blobId) ?? committed,
        coolSince: this.coolSince.get(blobId),
        now,
      },
      this.env.cfg,
    );
    if (d.coolSince === undefined) this.coolSince.delete(blobId);
    else this.coolSince.set(blobId, d.coolSince);
    if (d.target !== committed && this.pendingTarget.get(blobId) !== d.target)
      this.commitTarget(blobId, d.target);

    const queue = this.env.queue();
    const tasks = queue.forBlob(blobId);
    const extras = this.extrasOf(blobId);
    const want = wantedExtras(d.target, g);
    res.under = extras.length < want;
    res.over = extras.length > want;
    const plan = planExtras(
      {
        target: d.target,
        group: g,
        extras,
        copying: tasks.filter((t) => t.kind === TaskKind.REPLICATE).map((t) => t.storeId),
        removing: tasks.some((t) => t.kind === TaskKind.REMOVE),
        exclude: this.exclusions.excluded(blobId, now),
      },
      this.env.ctx(now),
    );
    if (plan.kind === 'add') {
      for (const s of plan.stores) {
        const r = queue.enqueue(
          { blobId, storeId: s.storeId, kind: TaskKind.REPLICATE, priority: TaskPriority.HIGH },
          now,
        );
        if (r.added) res.enqueued++;
      }
    } else if (plan.kind === 'remove') {
      const r = queue.enqueue(
        { blobId, storeId: plan.storeId, kind: TaskKind.REMOVE, priority: TaskPriority.LOW },
        now,
      );
      if (r.added) res.enqueued++;
    }
    return res;
  }

  private commitTarget(blobId: string, target: number): void {
    this.pendingTarget.set(blobId, target);
    this.env.log.info({ blob: blobId, to: target }, 'target replica count changed (placement mode)');
    this.env.directory.updateReplicas({ blobId, targetReplicaCount: target }).catch((err: unknown) => {
      if (this.pendingTarget.get(blobId) === target) this.pendingTarget.delete(blobId);
      this.env.log.warn({ blob: blobId, err: ConnectError.from(err).message }, 'could not commit target');
    });
  }

  /** Runs one placement-mode task. */
  execute(t: Task): Promise<void> {
    switch (t.kind) {
      case TaskKind.REPLICATE:
        return this.copy(t.blobId, t.storeId);
      case TaskKind.REMOVE:
        return this.remove(t.blobId, t.storeId);
      case TaskKind.REPAIR:
        return this.repair(t.blobId, t.storeId);
      default:
        // Collections are per-blob mode work; nothing to do here.
        return Promise.resolve();
    }
  }

  /** Copies a hot blob onto a non-member store and lists it as an extra replica. */
  private copy(blobId: string, storeId: string): Promise<void> {
    return this.env.exclusive(blobId, storeId, async () => {
      const now = this.env.now();
      const g = this.placement.groupFor(blobId);
      if (!g || membersIn(g).includes(storeId) || this.extrasOf(blobId).includes(storeId)) return;
      const target = this.targetOf(blobId, now);
      // No longer needed? (A DOWN or draining extra does not count: this copy replaces it.)
      const live = this.extrasOf(blobId).filter((s) => isKept(this.env.mirror.stores.get(s)));
      if (live.length >= wantedExtras(target, g)) return;
      const dest = this.env.mirror.stores.get(storeId);
      if (dest?.health !== StoreHealth.HEALTHY) {
        throw new TaskError(`target store ${storeId} is not healthy`, {
          storeFault: false,
          retryable: false,
        });
      }
      const sources = activeSources(g, this.env.ctx(now), new Set([storeId]));
      if (sources.length === 0) {
        throw new TaskError('no ACTIVE member to copy from', { storeFault: false, retryable: true });
      }
      const found = await statFirst(this.env, blobId, sources);
      if (!found || found.needle.deleted) {
        this.markGone(blobId, now);
        return;
      }
      const here = await this.statOn(dest, blobId);
      const volumeId =
        here && !here.deleted && here.writtenAtMs === found.needle.writtenAtMs
          ? here.volumeId // already there (a copy whose commit was lost)
          : await this.replicate(found.needle, found.from, dest, !(here?.deleted ?? false));
      this.env.ensureActing();
      try {
        await this.env.directory.updateReplicas({
          blobId,
          add: [{ storeId, volumeId }],
          targetReplicaCount: target,
        });
      } catch (err) {
        throw new TaskError(
          `commit of the extra replica on ${storeId}: ${ConnectError.from(err).rawMessage}`,
          {
            storeFault: false,
            retryable: true,
          },
        );
      }
      // Deleted while we copied? Then the delete may have missed this copy: take it back.
      const after = await statFirst(this.env, blobId, sources).catch(() => undefined);
      if (after?.needle.deleted) {
        await this.takeBack(blobId, [storeId], after.needle);
        return;
      }
      this.env.log.info({ blob: blobId, from: found.from.storeId, to: storeId }, 'extra replica added');
    });
  }

  private async statOn(store: StoreAt, blobId: string): Promise<NeedleFacts | undefined> {
    try {
      const res = await this.env
        .store(store)
        .stat({ blobId, cookie: 0n, includeDeleted: true }, { timeoutMs: 10_000, signal: this.env.signal() });
      return res.needle;
    } catch (err) {
      if (ConnectError.from(err).code === Code.NotFound) return undefined;
      throw storeCallError(`stat on ${store.storeId} at ${store.address}`, err);
    }
  }

  private async replicate(
    needle: NeedleFacts,
    from: { storeId: string; address: string; zone: string },
    to: { storeId: string; address: string },
    keepStamp: boolean,
  ): Promise<number> {
    this.env.ensureActing();
    try {
      const res = await this.env.store(to).replicate(
        {
          blobId: needle.blobId,
          cookie: needle.cookie,
          source: { storeId: from.storeId, address: from.address, zone: from.zone },
          sha256: needle.sha256,
          term: this.env.term(),
          keepStamp,
        },
        { timeoutMs: this.env.cfg.copyTimeoutMs, signal: this.env.signal() },
      );
      return res.replica?.volumeId ?? 0;
    } catch (err) {
      throw replicateError(err, from.storeId, to.storeId, {
        corrupt: () => this.reportCorruption(from.storeId, [needle.blobId]),
        refused: () => this.exclusions.refuse(needle.blobId, to.storeId),
      });
    }
  }

  /** Unlists extras of a deleted blob and tombstones them with the delete's stamp. */
  private async takeBack(
    blobId: string,
    storeIds: string[],
    tombstone: NeedleFacts | undefined,
  ): Promise<void> {
    this.env.ensureActing();
    await this.env.directory
      .updateReplicas({
        blobId,
        removeStoreIds: storeIds,
        targetReplicaCount: this.env.cfg.defaultReplicaCount,
      })
      .catch((err: unknown) => {
        throw new TaskError(`unlisting extras of deleted ${blobId}: ${ConnectError.from(err).rawMessage}`, {
          storeFault: false,
          retryable: true,
        });
      });
    for (const s of storeIds) {
      const view = this.env.mirror.stores.get(s);
      if (!view) continue;
      if (tombstone?.deleted) await copyNeedle(this.env, tombstone, view, view).catch(() => {});
      else await this.tombstone(view, blobId);
    }
    this.env.heat.forget(blobId);
    this.coolSince.delete(blobId);
    this.env.log.info({ blob: blobId, stores: storeIds }, 'extra replicas of a deleted blob taken back');
  }

  /** Unlists a surplus extra now; its tombstone follows after EXTRA_REMOVAL_GRACE. */
  private remove(blobId: string, storeId: string): Promise<void> {
    return this.env.exclusive(blobId, storeId, async () => {
      const g = this.placement.groupFor(blobId);
      const extras = this.extrasOf(blobId);
      if (!g || !extras.includes(storeId)) return;
      const down =
        !this.env.mirror.stores.get(storeId) ||
        this.env.mirror.stores.get(storeId)?.health === StoreHealth.DOWN;
      const wanted = wantedExtras(this.targetOf(blobId, this.env.now()), g);
      if (!down && extras.length <= wanted) return;
      // A draining store's extra goes only once the others kept reach the target.
      const others = extras.filter((s) => s !== storeId && isKept(this.env.mirror.stores.get(s)));
      if (!down && this.env.mirror.stores.get(storeId)?.draining && others.length < wanted) return;
      this.env.ensureActing();
      try {
        await this.env.directory.updateReplicas({ blobId, removeStoreIds: [storeId] });
      } catch (err) {
        throw new TaskError(`commit of the removal: ${ConnectError.from(err).rawMessage}`, {
          storeFault: false,
          retryable: true,
        });
      }
      this.env.log.info({ blob: blobId, store: storeId }, 'extra replica removed');
      this.later(this.env.cfg.extraRemovalGraceMs, () => this.tombstoneUnlisted(blobId, storeId));
    });
  }

  /** The delayed tombstone of an unlisted extra, unless the store is listed again by then. */
  private tombstoneUnlisted(blobId: string, storeId: string): Promise<void> {
    return this.env.exclusive(blobId, storeId, async () => {
      // A lost lease leaves an orphan copy (off the group, never listed): wasted space, not wrong reads.
      if (!this.env.acting()) return;
      const g = this.placement.groupFor(blobId);
      if (membersIn(g).includes(storeId) || this.extrasOf(blobId).includes(storeId)) return;
      if (this.env.queue().find(blobId, storeId)?.kind === TaskKind.REPLICATE) return;
      const s = this.env.mirror.stores.get(storeId);
      if (s) await this.tombstone(s, blobId);
    });
  }

  /** Corrupt copies reported by a store: a REPAIR task for each that the store holds as member or extra. */
  reportCorruption(storeId: string, blobIds: string[]): number {
    const now = this.env.now();
    let n = 0;
    for (const id of blobIds) {
      const g = this.placement.groupFor(id);
      if (!membersIn(g).includes(storeId) && !this.extrasOf(id).includes(storeId)) continue;
      const r = this.env
        .queue()
        .enqueue({ blobId: id, storeId, kind: TaskKind.REPAIR, priority: TaskPriority.HIGH }, now);
      if (r.added) n++;
      this.env.log.warn({ blob: id, store: storeId }, 'corrupt copy reported: repair enqueued');
    }
    return n;
  }

  /**
   * Repairs a corrupt copy. An extra is unlisted and tombstoned (the planner places
   * a new one elsewhere). A member's copy is overwritten with Replicate keep_stamp
   * from another ACTIVE member. NOTE: store.proto's keep_stamp keeps a needle with
   * an equal stamp, so until the store takes an equal-stamp copy over a needle that
   * fails its checksum, this leaves the member's corrupt copy in place (reads fail
   * over to another member); see docs/replication.md.
   */
  private async repair(blobId: string, storeId: string): Promise<void> {
    const g = this.placement.groupFor(blobId);
    const s = this.env.mirror.stores.get(storeId);
    if (!g || !s) return;
    if (this.extrasOf(blobId).includes(storeId)) {
      await this.env.exclusive(blobId, storeId, async () => {
        this.env.ensureActing();
        await this.env.directory
          .updateReplicas({ blobId, removeStoreIds: [storeId] })
          .catch((err: unknown) => {
            throw new TaskError(`unlisting corrupt extra: ${ConnectError.from(err).rawMessage}`, {
              storeFault: false,
              retryable: true,
            });
          });
        await this.tombstone(s, blobId);
      });
      this.avoidFor(blobId, storeId, this.env.now() + this.env.cfg.retryBackoffMaxMs);
      this.env.log.warn({ blob: blobId, store: storeId }, 'corrupt extra replica dropped');
      return;
    }
    if (!membersIn(g).includes(storeId)) return;
    const sources = activeSources(g, this.env.ctx(this.env.now()), new Set([storeId]));
    const found = await statFirst(this.env, blobId, sources);
    if (!found) return;
    const { outcome, detail } = await this.env.exclusive(blobId, storeId, () =>
      copyNeedleDetailed(this.env, found.needle, found.from, s),
    );
    if (outcome === 'source-corrupt') {
      throw new TaskError(replicateDataLoss(blobId, found.from.storeId, storeId, detail), {
        storeFault: false,
        retryable: true,
      });
    }
    this.env.log.warn(
      { blob: blobId, store: storeId, from: found.from.storeId },
      'corrupt member copy rewritten',
    );
  }

  /**
   * Audit: every ExtraReplicas record whose blob no ACTIVE member holds live (a
   * delete that raced a copy, or a record left by a takeover) loses its extras.
   */
  async sweepDeleted(): Promise<number> {
    let n = 0;
    for (const rec of [...this.placement.extras.values()]) {
      if (!this.env.acting()) break;
      if (rec.replicas.length === 0) continue;
      const g = this.placement.groupFor(rec.blobId);
      const sources = activeSources(g, this.env.ctx(this.env.now()));
      const found = await statFirst(this.env, rec.blobId, sources).catch(() => 'unknown' as const);
      if (found === 'unknown' || (found && !found.needle.deleted)) continue;
      try {
        await this.takeBack(
          rec.blobId,
          rec.replicas.map((r) => r.storeId),
          found?.needle,
        );
        n++;
      } catch (err) {
        this.env.log.debug({ blob: rec.blobId, err: String(err) }, 'sweep of a deleted blob failed');
      }
    }
    return n;
  }

  /** GetBlobStatus in placement mode: members, then extras, with facts from Stat on each. */
  async replicas(blobId: string): Promise<{ found: boolean; replicas: PlacedReplica[]; cold?: ColdRef }> {
    const g = this.placement.groupFor(blobId);
    const rows: { storeId: string; role: PlacedReplica['role'] }[] = [
      ...(g?.members ?? []).map((m) => ({
        storeId: m.storeId,
        role: m.state === PlacementMemberState.ACTIVE ? ('member' as const) : ('joining' as const),
      })),
      ...this.extrasOf(blobId).map((storeId) => ({ storeId, role: 'extra' as const })),
    ];
    let found = false;
    let cold: ColdRef | undefined;
    const replicas = await Promise.all(
      rows.map(async (r) => {
        const s = this.env.mirror.stores.get(r.storeId);
        const needle = s ? await this.statOn(s, blobId).catch(() => undefined) : undefined;
        if (needle && !needle.deleted && r.role !== 'joining') found = true;
        // A member holding the blob's stub: the blob is erasure-coded (docs/design/ec-tier.md).
        if (needle?.cold && r.role === 'member') cold ??= needle.cold;
        return {
          storeId: r.storeId,
          address: s?.address ?? '',
          zone: s?.zone ?? '',
          health: s?.health ?? StoreHealth.UNSPECIFIED,
          volumeId: needle && !needle.deleted ? needle.volumeId : 0,
          role: r.role,
        };
      }),
    );
    return { found, replicas, ...(cold ? { cold } : {}) };
  }

  private async tombstone(store: StoreAt, blobId: string): Promise<void> {
    for (let i = 0; i < 3 && this.env.acting(); i++) {
      try {
        await this.env.store(store).delete({ blobId, term: this.env.term() }, { timeoutMs: 5_000 });
        return;
      } catch (err) {
        this.env.log.debug(
          { blob: blobId, store: store.storeId, err: ConnectError.from(err).message },
          'tombstone failed',
        );
      }
    }
  }

  private later(ms: number, fn: () => Promise<void>): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn().catch((err: unknown) => this.env.log.debug({ err: String(err) }, 'delayed tombstone failed'));
    }, ms);
    t.unref();
    this.timers.add(t);
  }

  private markGone(blobId: string, now: number): void {
    if (this.gone.size >= MAX_REMEMBERED) this.gone.clear();
    this.gone.set(blobId, now + this.env.cfg.monitoringIntervalMs);
    this.env.heat.forget(blobId);
    this.coolSince.delete(blobId);
  }

  /** Keeps copies of the blob off the store until `until` (a failed copy). */
  avoidFor(blobId: string, storeId: string, until: number): void {
    this.exclusions.avoidFor(blobId, storeId, until);
  }

  /** Called when the lease is lost: pending state belongs to the next active instance. */
  reset(): void {
    this.pendingTarget.clear();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}
