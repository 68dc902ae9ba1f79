import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { DirectoryNode } from './node.js';
import {
  finishMoves,
  movesInProgress,
  planBalance,
  startDrains,
  underfullStores,
} from './placement-moves.js';
import {
  demoteDownMembers,
  initialPlacement,
  type PlacementCandidate,
  replaceLostMembers,
} from './placement-plan.js';
import { decideFirstPlacement, type FirstPlacementDecision } from './placement-start.js';
import type { StoreRegistry } from './stores.js';

/**
 * The leader's placement duties, checked on a timer (placement-plan.ts decides):
 * - creates the placement groups once PLACEMENT_GROUPS > 0, the cluster holds no
 *   per-blob records, and enough stores are up (placement-start.ts: the replica
 *   count, settled, and PLACEMENT_EXPECTED_STORES or PLACEMENT_EXPECTED_WAIT);
 * - demotes the ACTIVE members of a store that went DOWN to JOINING at once, so
 *   its groups keep taking writes on the other members and it serves no stale
 *   reads when it returns (the replication manager catches it up);
 * - replaces members of stores DOWN for PLACEMENT_REPLACE_AFTER with JOINING ones;
 * - drains (placement-moves.ts): starts moves off draining stores, at most
 *   DRAIN_GROUPS_AT_ONCE groups at once, and finishes every move whose
 *   replacement is ACTIVE (balance moves too);
 * - balances on its own (PLACEMENT_AUTO_BALANCE_AFTER): when an eligible store has
 *   been clearly below its share of memberships for that long (a store added to a
 *   running cluster, one back after its groups were replaced), starts the moves
 *   `haystack placement balance` would, at most AUTO_BALANCE_GROUPS_AT_ONCE groups
 *   moving at once, until it is not — never while a store is DOWN or draining
 *   (repairs and drains first).
 *
 * Every placement change the leader makes on its own or for an operator runs
 * through `exclusive`, so each is planned on the state the previous one left.
 *
 * How long a store has been DOWN, or below its share, is leader-local memory: a
 * new leader starts the clock again, which only delays a replacement or a balance
 * (never hastens one).
 */
/** Groups with a drain move under way at once (each is a backfill to run). */
export const DRAIN_GROUPS_AT_ONCE = 16;
/** Groups with a move under way at once before an automatic balance starts more. */
export const AUTO_BALANCE_GROUPS_AT_ONCE = 8;

export class PlacementKeeper {
  private timer: NodeJS.Timeout | null = null;
  private busy = false;
  private chain: Promise<unknown> = Promise.resolve();
  /** storeId → when this leader first saw it DOWN (performance.now()). */
  private readonly downSince = new Map<string, number>();
  /** storeId → when this leader first saw it clearly below its share (performance.now()). */
  private readonly underfullSince = new Map<string, number>();
  /** Before the first placement: the eligible stores seen last, and since when (performance.now()). */
  private eligibleSeen: { ids: string; since: number } | undefined;
  /** Before the first placement: since when at least the replica count of stores is eligible. */
  private enoughSince: number | undefined;
  /** The last first-placement wait logged (logged when it changes). */
  private waitLogged: string | undefined;

  constructor(
    private readonly node: DirectoryNode,
    private readonly stores: StoreRegistry,
  ) {}

  onLeaderReady(): void {
    this.downSince.clear();
    this.underfullSince.clear();
    const every = Math.max(50, Math.min(250, this.node.cfg.placementReplaceAfterMs / 4));
    this.timer = setInterval(() => void this.tick(), every);
    this.timer.unref();
  }

  onLeaderStop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  candidates(): PlacementCandidate[] {
    return this.stores.candidates().map((c) => ({
      storeId: c.storeId,
      zone: c.zone,
      health: c.health,
      writable: c.writable,
      draining: c.draining ?? false,
    }));
  }

  /** Runs fn after every placement change planned before it (one at a time). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => {});
    return run;
  }

  /**
   * The first placement is final until an operator moves groups, so it waits
   * (placement-start.ts) until the set of eligible stores has not changed for a
   * moment — stores started together all get memberships, instead of the first
   * `replicas` to register getting every group (then one store down and one slow
   * heartbeat stream leave every group without an ACTIVE member) — and for
   * PLACEMENT_EXPECTED_STORES, bounded by PLACEMENT_EXPECTED_WAIT.
   */
  private firstPlacement(candidates: readonly PlacementCandidate[]): FirstPlacementDecision {
    const { cfg, log } = this.node;
    const up = candidates.filter((c) => c.health === StoreHealth.HEALTHY && c.writable);
    const ids = up
      .map((c) => c.storeId)
      .sort()
      .join(',');
    const now = performance.now();
    if (this.eligibleSeen?.ids !== ids) this.eligibleSeen = { ids, since: now };
    if (up.length < cfg.defaultReplicaCount) this.enoughSince = undefined;
    else this.enoughSince ??= now;
    const decision = decideFirstPlacement({
      eligible: up.length,
      replicas: cfg.defaultReplicaCount,
      expected: cfg.placementExpectedStores,
      unchangedMs: now - this.eligibleSeen.since,
      settleMs: Math.max(1000, Math.min(3000, 2 * cfg.heartbeatIntervalMs)),
      enoughForMs: this.enoughSince === undefined ? undefined : now - this.enoughSince,
      expectedWaitMs: cfg.placementExpectedWaitMs,
    });
    if (!decision.place && decision.waitingFor === 'expected' && this.waitLogged !== ids) {
      this.waitLogged = ids;
      log.info(
        {
          eligible: up.map((c) => c.storeId),
          expected: cfg.placementExpectedStores,
          waitMs: cfg.placementExpectedWaitMs,
        },
        'placement groups wait for PLACEMENT_EXPECTED_STORES',
      );
    }
    return decision;
  }

  /** One check; at most one proposal in flight. */
  async tick(): Promise<void> {
    if (this.busy || !this.node.isServingLeader()) return;
    this.busy = true;
    try {
      await this.exclusive(() => this.check());
    } catch (err) {
      this.node.log.warn({ err: (err as Error).message }, 'placement check failed; retrying');
    } finally {
      this.busy = false;
    }
  }

  private async check(): Promise<void> {
    const { cfg, state, log } = this.node;
    const placement = state.placement;
    if (!placement.enabled) {
      if (cfg.placementGroups === 0) return;
      if (state.blobs.size > 0) {
        log.error(
          { blobs: state.blobs.size },
          'PLACEMENT_GROUPS is set but this cluster holds per-blob records: placement groups are chosen when a cluster is created',
        );
        return;
      }
      const candidates = this.candidates();
      const decision = this.firstPlacement(candidates);
      if (!decision.place) return;
      const plan = initialPlacement(candidates, cfg.placementGroups, cfg.defaultReplicaCount);
      if (!plan.ok) return;
      await this.node.propose({
        case: 'placementChanged',
        value: { groupCount: cfg.placementGroups, groups: plan.groups },
      });
      const created = {
        groups: cfg.placementGroups,
        replicas: cfg.defaultReplicaCount,
        stores: this.eligibleSeen?.ids,
      };
      if (decision.short > 0) {
        log.warn(
          { ...created, missing: decision.short, expected: cfg.placementExpectedStores },
          'placement groups created without every expected store (PLACEMENT_EXPECTED_WAIT ran out): balance once they register',
        );
      } else log.info(created, 'placement groups created');
      return;
    }
    const now = performance.now();
    const down = new Set<string>();
    const lost = new Set<string>();
    for (const c of this.candidates()) {
      if (c.health !== StoreHealth.DOWN) {
        this.downSince.delete(c.storeId);
        continue;
      }
      down.add(c.storeId);
      const since = this.downSince.get(c.storeId) ?? now;
      this.downSince.set(c.storeId, since);
      if (now - since >= cfg.placementReplaceAfterMs) lost.add(c.storeId);
    }
    if (down.size > 0 && (await this.replaceDown(down, lost))) return;
    await this.moves(down);
  }

  /** Demotes or replaces members of DOWN stores; true when it proposed a change. */
  private async replaceDown(down: Set<string>, lost: Set<string>): Promise<boolean> {
    const { state, log } = this.node;
    const placement = state.placement;
    const demoted = demoteDownMembers(placement.groups, down);
    if (demoted.length > 0) {
      await this.node.propose({ case: 'placementChanged', value: { groupCount: 0, groups: demoted } });
      log.warn(
        { down: [...down], groups: demoted.length },
        'placement: members of DOWN stores demoted to JOINING',
      );
      return true;
    }
    if (lost.size === 0) return false;
    const changed = replaceLostMembers(placement.groups, this.candidates(), lost);
    if (changed.length === 0) return false;
    await this.node.propose({ case: 'placementChanged', value: { groupCount: 0, groups: changed } });
    log.warn(
      { lost: [...lost], groups: changed.length },
      'placement: members of lost stores replaced (JOINING)',
    );
    return true;
  }

  /** Finishes the moves whose replacements are ACTIVE, then starts drain moves. */
  private async moves(down: ReadonlySet<string>): Promise<void> {
    const { state, log } = this.node;
    const finished = finishMoves(state.placement.groups, down);
    if (finished.length > 0) {
      await this.node.propose({ case: 'placementChanged', value: { groupCount: 0, groups: finished } });
      log.info(
        { groups: finished.map((g) => g.group) },
        'placement: moves finished (replacements ACTIVE, leaving members removed)',
      );
      return;
    }
    const started = startDrains(state.placement.groups, this.candidates(), DRAIN_GROUPS_AT_ONCE);
    if (started.length === 0) {
      await this.autoBalance(down);
      return;
    }
    await this.node.propose({ case: 'placementChanged', value: { groupCount: 0, groups: started } });
    log.info(
      { groups: started.map((g) => g.group) },
      'placement: drain moves started (members leaving, replacements JOINING)',
    );
  }

  /**
   * PLACEMENT_AUTO_BALANCE_AFTER: starts balance moves (planBalance, the moves of
   * BalancePlacement) once an eligible store has been clearly below its share
   * (underfullStores) for that long, keeping at most AUTO_BALANCE_GROUPS_AT_ONCE
   * groups moving. Not while a store is DOWN or draining: those come first, and
   * the clock starts again after them.
   */
  private async autoBalance(down: ReadonlySet<string>): Promise<void> {
    const { cfg, state, log } = this.node;
    const afterMs = cfg.placementAutoBalanceAfterMs;
    const candidates = this.candidates();
    if (afterMs === 0 || down.size > 0 || candidates.some((c) => c.draining)) {
      this.underfullSince.clear();
      return;
    }
    const groups = state.placement.groups;
    const under = underfullStores(groups, candidates);
    const now = performance.now();
    for (const id of this.underfullSince.keys()) if (!under.includes(id)) this.underfullSince.delete(id);
    let due = false;
    for (const id of under) {
      const since = this.underfullSince.get(id) ?? now;
      this.underfullSince.set(id, since);
      if (now - since >= afterMs) due = true;
    }
    const room = AUTO_BALANCE_GROUPS_AT_ONCE - movesInProgress(groups);
    if (!due || room <= 0) return;
    const plan = planBalance(groups, candidates, room);
    if (plan.changed.length === 0) return;
    await this.node.propose({ case: 'placementChanged', value: { groupCount: 0, groups: plan.changed } });
    log.info(
      { moves: plan.moves, belowShare: under, afterMs },
      'placement: automatic balance moves started (a store below its share for PLACEMENT_AUTO_BALANCE_AFTER)',
    );
  }
}
