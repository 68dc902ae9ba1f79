import { Code, ConnectError } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import type { NeedleFacts } from '../../gen/haystack/v1/store_pb.js';
import { sleep } from '../common/sleep.js';
import { fetchDigests, forEachLimit, listGroup, syncGroup } from './group-sync.js';
import { copyNeedle } from './needle-copy.js';
import type { PlacementEnv } from './placement-env.js';
import {
  activeSources,
  membersIn,
  mismatchedGroups,
  newer,
  promoted,
  type Stamp,
} from './placement-planner.js';
import { storeCallError } from './store-calls.js';

/** Progress of one member's backfill (GetStats / metrics). */
export interface BackfillProgress {
  group: number;
  storeId: string;
  /** Needles of the source listed so far. */
  listed: number;
  /** Needles copied onto the joining member so far. */
  copied: number;
  startedAt: number;
}

/** How many UpdatePlacement compare-and-set conflicts one promotion re-reads through. */
const CAS_ATTEMPTS = 5;

/**
 * Groups backfilled at once. A store that returns after an outage is JOINING in
 * every group it was ACTIVE in (~P × replicas / stores of them); one at a time,
 * each costing list + digests + a directory commit, that took minutes under load
 * and left those groups one failure away from having no ACTIVE member.
 */
export const BACKFILL_GROUPS_AT_ONCE = 4;

/**
 * Backfill: a JOINING member of a placement group (a replacement for a lost store,
 * or a store added by an operator) gets every needle of the group, then becomes
 * ACTIVE (UpdatePlacement, compare-and-set on the group's epoch).
 *
 * Why one pass plus a final comparison suffices. Gateways send every write and
 * delete of the group to every member in their map, JOINING ones included, except
 * JOINING members that are DOWN; and a write or delete that missed a member is
 * acknowledged only if, in a map the directory leader confirmed current within the
 * gateway's MAP_STALE_AFTER, that member is still JOINING and DOWN (GroupPath).
 * Nothing is compared here before the member's store has been HEALTHY, and it a
 * member, for BACKFILL_SETTLE > MAP_STALE_AFTER in the mirror (settleLeft). So a
 * write that missed the member and is acknowledged was acknowledged on a map
 * confirmed before the member came back (or joined): it was durable on the members
 * it reached before BACKFILL_SETTLE ran out, before the first digests are read;
 * and any later ack is refused (the retry reaches the member). What remains to
 * copy is on the ACTIVE members when this starts, or arrives at the joining member
 * directly. The pass copies everything an ACTIVE member held when its listing was
 * read: live needles with Replicate keep_stamp, tombstones with Delete
 * written_at_ms, only where the joining store lacks the id or holds an older stamp
 * (it may already have a newer write). What the pass can miss is what landed on
 * the ACTIVE members but not on the joining one during the pass — writes whose
 * delivery to it failed. The final comparison catches those: equal digests over
 * all members promote at once; otherwise the group is synced (every member listed,
 * the newest needle per id copied where missing) and the member is promoted when
 * every needle the listings held reached it. That sync does not wait for needles
 * to settle (anti-entropy does): a write in flight may be copied as well as
 * delivered by its gateway, which stamp order makes harmless. Anything a failure
 * leaves out keeps the member JOINING for the next round.
 */
export class Backfill {
  readonly progress = new Map<number, BackfillProgress>();
  promotedTotal = 0;
  private running: Promise<number> | undefined;
  // Settle times are on env.monotonic(): a wall-clock step forward (NTP, a skewed
  // host) must not let a member be compared before BACKFILL_SETTLE really elapsed.
  /** Since when (env.monotonic()) each store has been HEALTHY in the mirror, as far as seen. */
  private readonly healthySince = new Map<string, number>();
  /** Since when (env.monotonic()) each `group/store` has been a member, as far as seen. */
  private readonly memberSince = new Map<string, number>();
  private settleTimer: { at: number; timer: NodeJS.Timeout } | undefined;

  constructor(private readonly env: PlacementEnv) {}

  /** A store's health changed in the mirror: the settle time runs from its return to HEALTHY. */
  noteHealth(storeId: string, health: number, previous: number | undefined): void {
    if (health !== StoreHealth.HEALTHY) this.healthySince.delete(storeId);
    else if (previous !== StoreHealth.HEALTHY) this.healthySince.set(storeId, this.env.monotonic());
  }

  /** Groups changed in the mirror: the settle time of a new member runs from now. */
  noteMembers(groups: number[]): void {
    const now = this.env.monotonic();
    for (const group of groups) {
      const members = new Set(membersIn(this.env.mirror.placement.groups[group]));
      for (const key of [...this.memberSince.keys()]) {
        if (key.startsWith(`${group}/`) && !members.has(key.slice(key.indexOf('/') + 1)))
          this.memberSince.delete(key);
      }
      for (const id of members)
        if (!this.memberSince.has(`${group}/${id}`)) this.memberSince.set(`${group}/${id}`, now);
    }
  }

  /** A snapshot replaced the mirror: what happened in between is unknown, so every wait starts again. */
  forgetTimes(): void {
    this.healthySince.clear();
    this.memberSince.clear();
  }

  /**
   * Milliseconds before the member may be compared: BACKFILL_SETTLE after the later of
   * its store's return to HEALTHY and its joining the group (first seen now when this
   * instance did not see it happen: a takeover waits once more).
   */
  private settleLeft(group: number, storeId: string): number {
    const now = this.env.monotonic();
    const first = (m: Map<string, number>, key: string) => {
      const at = m.get(key);
      if (at !== undefined) return at;
      m.set(key, now);
      return now;
    };
    const since = Math.max(first(this.healthySince, storeId), first(this.memberSince, `${group}/${storeId}`));
    return since + this.env.cfg.backfillSettleMs - now;
  }

  /** Runs the backfill again once the earliest waiting member has settled. */
  private recheckIn(ms: number): void {
    const at = this.env.monotonic() + ms;
    if (this.settleTimer && this.settleTimer.at <= at) return;
    if (this.settleTimer) clearTimeout(this.settleTimer.timer);
    const timer = setTimeout(() => {
      this.settleTimer = undefined;
      if (!this.env.acting()) return;
      // After a run under way (it may have passed the member already), not merged into it.
      const after = this.running ?? Promise.resolve(0);
      void after
        .catch(() => 0)
        .then(() => this.runAll())
        .catch((err: unknown) => this.env.log.warn({ err: String(err) }, 'backfill run failed'));
    }, ms + 5);
    timer.unref();
    this.settleTimer = { at, timer };
  }

  /** The manager stops: no settle timer outlives it. */
  stop(): void {
    if (this.settleTimer) clearTimeout(this.settleTimer.timer);
    this.settleTimer = undefined;
  }

  /** (group, store) of every JOINING member. */
  joining(): { group: number; storeId: string }[] {
    const out: { group: number; storeId: string }[] = [];
    for (const g of this.env.mirror.placement.groups) {
      if (!g) continue;
      for (const id of membersIn(g, PlacementMemberState.JOINING)) out.push({ group: g.group, storeId: id });
    }
    return out;
  }

  /**
   * Backfills every JOINING member: up to BACKFILL_GROUPS_AT_ONCE groups in
   * parallel, the members of one group one after another; one run at once.
   * Resolves to the members promoted.
   */
  runAll(): Promise<number> {
    if (!this.running) {
      this.running = this.runEach().finally(() => {
        this.running = undefined;
      });
    }
    return this.running;
  }

  private async runEach(): Promise<number> {
    const byGroup = new Map<number, string[]>();
    for (const { group, storeId } of this.joining()) {
      byGroup.set(group, [...(byGroup.get(group) ?? []), storeId]);
    }
    let n = 0;
    await forEachLimit([...byGroup], BACKFILL_GROUPS_AT_ONCE, async ([group, storeIds]) => {
      for (const storeId of storeIds) {
        if (!this.env.acting()) return;
        try {
          if (await this.backfill(group, storeId)) n++;
        } catch (err) {
          this.env.log.warn(
            { group, store: storeId, err: err instanceof Error ? err.message : String(err) },
            'backfill failed: the member stays JOINING',
          );
        } finally {
          this.progress.delete(group);
        }
      }
    });
    return n;
  }

  /** Backfills one JOINING member and promotes it. False when it stays JOINING for now. */
  async backfill(group: number, storeId: string): Promise<boolean> {
    const env = this.env;
    const g = env.mirror.placement.groups[group];
    const target = env.mirror.stores.get(storeId);
    if (!g || !target || target.health !== StoreHealth.HEALTHY) return false;
    if (!membersIn(g, PlacementMemberState.JOINING).includes(storeId)) return false;
    // A write a gateway planned without this member may still be acknowledged until
    // the settle time has run (see above): comparing before then could miss it.
    const left = this.settleLeft(group, storeId);
    if (left > 0) {
      env.log.debug({ group, store: storeId, waitMs: left }, 'joining member settling before backfill');
      this.recheckIn(left);
      return false;
    }
    const [source] = activeSources(g, env.ctx(env.now()), new Set([storeId]));
    if (!source) return false;
    // A member demoted while its store was briefly DOWN (a restart, a heartbeat
    // stream that broke under load) usually missed nothing: equal digests over the
    // members promote it without listing the group.
    const comparedAt = env.monotonic();
    if (await this.digestsEqual(group, this.upMembers(group))) {
      env.log.info({ group, store: storeId }, 'joining member already holds the group');
      return this.promote(group, storeId, comparedAt);
    }
    const p: BackfillProgress = { group, storeId, listed: 0, copied: 0, startedAt: env.now() };
    this.progress.set(group, p);
    env.log.info({ group, store: storeId, from: source.storeId }, 'backfill started');

    // What the joining store holds already (writes since it joined, an earlier pass).
    const held = new Map<string, Stamp>();
    for (const n of (await listGroup(env, target, group)).values()) held.set(n.blobId, n);
    let failures = 0;
    await listGroup(env, source, group, async (page: NeedleFacts[]) => {
      p.listed += page.length;
      const todo = page.filter((n) => newer(n, held.get(n.blobId)));
      await forEachLimit(todo, env.cfg.replicationWorkers, async (n) => {
        try {
          if ((await copyNeedle(env, n, source, target)) === 'copied') p.copied++;
          // 'gone' or a corrupt source: the final comparison decides.
        } catch (err) {
          failures++;
          if (failures === 1)
            env.log.debug({ group, blob: n.blobId, err: String(err) }, 'backfill copy failed');
        }
      });
    });
    env.log.info(
      { group, store: storeId, listed: p.listed, copied: p.copied, failures },
      'backfill pass done',
    );
    const finalAt = env.monotonic();
    if (!(await this.complete(group, storeId))) return false;
    return this.promote(group, storeId, finalAt);
  }

  /** The final comparison (see above): true when the joining member holds every listed needle. */
  private async complete(group: number, storeId: string): Promise<boolean> {
    const env = this.env;
    const g = env.mirror.placement.groups[group];
    if (!g) return false;
    const members = this.upMembers(group);
    // DOWN now: not compared, so not known to hold anything (promote checks again).
    if (!members.includes(storeId)) return false;
    if (await this.digestsEqual(group, members)) return true;
    const sync = await syncGroup(env, g, {
      members,
      sources: new Set(members),
      settledBefore: BigInt(Number.MAX_SAFE_INTEGER),
    });
    return !sync.failedTo.has(storeId);
  }

  /** The group's members whose stores are not DOWN. */
  private upMembers(group: number): string[] {
    const g = this.env.mirror.placement.groups[group];
    return membersIn(g).filter((s) => this.env.mirror.stores.get(s)?.health !== StoreHealth.DOWN);
  }

  private async digestsEqual(group: number, members: string[]): Promise<boolean> {
    const g = this.env.mirror.placement.groups[group];
    const digests = await fetchDigests(this.env, new Set(members));
    if (!g || digests.size < members.length) return false;
    return mismatchedGroups([g], digests, () => members).length === 0;
  }

  /**
   * Whether the member's store has been HEALTHY, and it a member, without a break since
   * BACKFILL_SETTLE before `comparedAt` (the final comparison's start). A store that went
   * DOWN during the comparison missed the writes gateways made without it meanwhile,
   * which the comparison may not have seen: its settle time starts again.
   */
  private settledAt(group: number, storeId: string, comparedAt: number): boolean {
    const healthy = this.healthySince.get(storeId);
    const member = this.memberSince.get(`${group}/${storeId}`);
    const settle = this.env.cfg.backfillSettleMs;
    return (
      this.env.mirror.stores.get(storeId)?.health === StoreHealth.HEALTHY &&
      healthy !== undefined &&
      member !== undefined &&
      Math.max(healthy, member) + settle <= comparedAt
    );
  }

  /** UpdatePlacement making the member ACTIVE; a moved epoch is re-read and retried. */
  private async promote(group: number, storeId: string, comparedAt: number): Promise<boolean> {
    const env = this.env;
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const g = env.mirror.placement.groups[group];
      const members = g && promoted(g, storeId);
      if (!g || !members) return false; // changed by someone else: nothing to promote
      if (!this.settledAt(group, storeId, comparedAt)) {
        env.log.info(
          { group, store: storeId },
          'joining member was not HEALTHY throughout its comparison: not promoted',
        );
        return false;
      }
      env.ensureActing();
      try {
        await env.directory.updatePlacement({ group, expectedEpoch: g.epoch, members });
        this.promotedTotal++;
        env.log.info({ group, store: storeId }, 'backfilled member is ACTIVE');
        return true;
      } catch (err) {
        const ce = ConnectError.from(err);
        if (ce.code !== Code.FailedPrecondition)
          throw storeCallError(`UpdatePlacement of group ${group}`, ce);
        // The group moved on: wait until the mirror shows the newer epoch, then re-read.
        const deadline = env.monotonic() + 5_000;
        while (env.mirror.placement.groups[group]?.epoch === g.epoch && env.monotonic() < deadline) {
          await sleep(50, env.signal());
        }
      }
    }
    return false;
  }
}
