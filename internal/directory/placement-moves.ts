import { clone, create } from '@bufbuild/protobuf';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { type StorePlacementLoad, StorePlacementLoadSchema } from '../../gen/haystack/v1/directory_pb.js';
import {
  type ExtraReplicas,
  type PlacementGroup,
  type PlacementMember,
  PlacementMemberSchema,
  PlacementMemberState,
} from '../../gen/haystack/v1/metadata_pb.js';
import { eligible, loads, type PlacementCandidate, pick, withMembers } from './placement-plan.js';

/**
 * Moving placement-group memberships between stores (pure): an operator's drain
 * (DrainStore) and balance (BalancePlacement). A move is two log changes:
 *
 * 1. start: the member on the store giving the group up is marked `leaving` (it
 *    stays a full member: it takes the group's writes and, ACTIVE, serves its
 *    reads), and a JOINING member on the receiving store is added in the same
 *    entry. Gateways write to it at once; the replication manager backfills it
 *    (internal/replication/backfill.ts: copy, final comparison, then ACTIVE).
 * 2. finish: once every member that is not leaving is ACTIVE and its store is not
 *    DOWN, the leaving members are removed.
 *
 * So the leaving store keeps its copies in the group until a replacement holds
 * every needle, and the group never has fewer complete readable members than
 * before the move. No second copy mechanism: the backfill of a new member is the
 * one a replaced lost store gets.
 */

/** Groups with a move under way (a leaving member). */
export function movesInProgress(groups: readonly (PlacementGroup | undefined)[]): number {
  return groups.filter((g) => g?.members.some((m) => m.leaving)).length;
}

/**
 * Step 2 for every group it applies to: the groups without their leaving
 * members, where every other member is ACTIVE and not on a `down` store.
 */
export function finishMoves(
  groups: readonly (PlacementGroup | undefined)[],
  down: ReadonlySet<string>,
): PlacementGroup[] {
  const out: PlacementGroup[] = [];
  for (const g of groups) {
    if (!g?.members.some((m) => m.leaving)) continue;
    const staying = g.members.filter((m) => !m.leaving);
    const complete =
      staying.length > 0 &&
      staying.every((m) => m.state === PlacementMemberState.ACTIVE && !down.has(m.storeId));
    if (complete)
      out.push(
        withMembers(
          g,
          staying.map((m) => clone(PlacementMemberSchema, m)),
        ),
      );
  }
  return out;
}

/** A member marked leaving (a copy). */
function leavingCopy(m: PlacementMember): PlacementMember {
  const copy = clone(PlacementMemberSchema, m);
  copy.leaving = true;
  return copy;
}

const joining = (storeId: string) =>
  create(PlacementMemberSchema, { storeId, state: PlacementMemberState.JOINING });

/**
 * Step 1 for draining stores: in each group holding a member on a draining store
 * that is not leaving yet, that member is marked leaving and a replacement placed
 * like any new membership (placement-plan.ts rule 3: fewest memberships, a zone
 * the group's staying members do not use, rendezvous hash). A group with no
 * eligible store for it is left as it is (the drain waits for one). At most
 * `limit` groups have a move under way at once (the backfill's work in flight).
 */
export function startDrains(
  groups: readonly (PlacementGroup | undefined)[],
  candidates: readonly PlacementCandidate[],
  limit: number,
): PlacementGroup[] {
  const draining = new Set(candidates.filter((c) => c.draining).map((c) => c.storeId));
  if (draining.size === 0) return [];
  const zoneOf = new Map(candidates.map((c) => [c.storeId, c.zone]));
  const load = loads(groups);
  let inFlight = movesInProgress(groups);
  const out: PlacementGroup[] = [];
  for (const g of groups) {
    if (inFlight >= limit) break;
    if (!g?.members.some((m) => draining.has(m.storeId) && !m.leaving)) continue;
    const taken = new Set(g.members.map((m) => m.storeId));
    const zones = new Set(
      g.members.filter((m) => !m.leaving && !draining.has(m.storeId)).map((m) => zoneOf.get(m.storeId) ?? ''),
    );
    const members = g.members.map((m) => clone(PlacementMemberSchema, m));
    const added: PlacementMember[] = [];
    for (const [i, m] of g.members.entries()) {
      if (!draining.has(m.storeId) || m.leaving) continue;
      const c = pick(g.group, candidates, taken, zones, load);
      if (!c) continue;
      taken.add(c.storeId);
      zones.add(c.zone);
      load.set(c.storeId, (load.get(c.storeId) ?? 0) + 1);
      members[i] = leavingCopy(m);
      added.push(joining(c.storeId));
    }
    if (added.length === 0) continue;
    out.push(withMembers(g, [...members, ...added]));
    inFlight++;
  }
  return out;
}

export interface PlannedMove {
  group: number;
  from: string;
  to: string;
}

export interface BalancePlan {
  moves: PlannedMove[];
  /** The groups as they are once the moves are started. */
  changed: PlacementGroup[];
  /** Staying memberships per store before and after the moves. */
  before: Map<string, number>;
  after: Map<string, number>;
}

function distinctZones(storeIds: readonly string[], zoneOf: ReadonlyMap<string, string>): number {
  return new Set(storeIds.map((s) => zoneOf.get(s) ?? '')).size;
}

/**
 * Staying memberships per store as balance counts them: stores that are neither
 * draining nor DOWN (0 for one without any), leaving members not counted.
 */
function balanceLoads(
  groups: readonly (PlacementGroup | undefined)[],
  candidates: readonly PlacementCandidate[],
): Map<string, number> {
  const load = new Map<string, number>();
  for (const c of candidates) {
    if (!c.draining && c.health !== StoreHealth.DOWN) load.set(c.storeId, 0);
  }
  for (const g of groups) {
    for (const m of g?.members ?? []) {
      if (!m.leaving && load.has(m.storeId)) load.set(m.storeId, (load.get(m.storeId) ?? 0) + 1);
    }
  }
  return load;
}

/**
 * The eligible stores clearly below their share: at least 2 staying memberships
 * fewer than the mean over the stores balance counts. A balanced placement (every
 * two stores within one membership, what planBalance leaves) has none, so moves
 * started for these end instead of churning.
 */
export function underfullStores(
  groups: readonly (PlacementGroup | undefined)[],
  candidates: readonly PlacementCandidate[],
): string[] {
  const load = balanceLoads(groups, candidates);
  if (load.size === 0) return [];
  let total = 0;
  for (const n of load.values()) total += n;
  const mean = total / load.size;
  return candidates
    .filter((c) => eligible(c) && (load.get(c.storeId) ?? 0) + 2 <= mean)
    .map((c) => c.storeId)
    .sort();
}

/**
 * Balance: up to `maxMoves` moves (step 1 above), each taking one membership
 * from the store with the most staying memberships to an eligible store with the
 * fewest, while they differ by more than one. Only stores that are neither
 * draining nor DOWN count. A group moves only when it has no move or backfill
 * under way (no leaving or JOINING member), the source's member is ACTIVE, the
 * target is not a member, and the group keeps at least as many distinct zones.
 * Memberships are what placement balances (each group holds about 1/P of the
 * blobs), so bytes follow them.
 */
export function planBalance(
  groups: readonly (PlacementGroup | undefined)[],
  candidates: readonly PlacementCandidate[],
  maxMoves: number,
): BalancePlan {
  const load = balanceLoads(groups, candidates);
  const before = new Map(load);
  const zoneOf = new Map(candidates.map((c) => [c.storeId, c.zone]));
  const targets = candidates.filter(eligible).map((c) => c.storeId);
  const busy = new Set<number>();
  for (const g of groups) {
    if (g?.members.some((m) => m.leaving || m.state !== PlacementMemberState.ACTIVE)) busy.add(g.group);
  }
  const byLoad = (a: string, b: string, dir: 1 | -1) =>
    dir * ((load.get(a) ?? 0) - (load.get(b) ?? 0)) || (a < b ? -1 : a > b ? 1 : 0);
  const exhausted = new Set<string>();
  const moves: PlannedMove[] = [];
  const changed = new Map<number, PlacementGroup>();
  while (moves.length < maxMoves) {
    const from = [...load.keys()].filter((s) => !exhausted.has(s)).sort((a, b) => byLoad(a, b, -1))[0];
    if (from === undefined) break;
    let moved = false;
    for (const to of targets.filter((t) => t !== from).sort((a, b) => byLoad(a, b, 1))) {
      if ((load.get(from) ?? 0) - (load.get(to) ?? 0) <= 1) break;
      const g = groups.find((x) => {
        if (!x || busy.has(x.group)) return false;
        const ids = x.members.map((m) => m.storeId);
        if (!ids.includes(from) || ids.includes(to)) return false;
        const after = [...ids.filter((s) => s !== from), to];
        return distinctZones(after, zoneOf) >= distinctZones(ids, zoneOf);
      });
      if (!g) continue;
      const members = g.members.map((m) =>
        m.storeId === from ? leavingCopy(m) : clone(PlacementMemberSchema, m),
      );
      changed.set(g.group, withMembers(g, [...members, joining(to)]));
      busy.add(g.group);
      moves.push({ group: g.group, from, to });
      load.set(from, (load.get(from) ?? 0) - 1);
      load.set(to, (load.get(to) ?? 0) + 1);
      moved = true;
      break;
    }
    if (!moved) exhausted.add(from);
  }
  return { moves, changed: [...changed.values()], before, after: load };
}

/**
 * Each registered store's share of the placement: memberships (leaving ones
 * included), leaving ones, hot blobs' extra replicas, EC memberships (groups
 * whose ec_members name it) and shards held, and whether a draining store is
 * drained (holds no membership, no extra replica and no EC membership: its
 * shards have been moved by the replication manager, internal/replication/shard-drain.ts).
 */
export function storeLoads(
  groups: readonly (PlacementGroup | undefined)[],
  extras: Iterable<ExtraReplicas>,
  stores: readonly { storeId: string; draining: boolean; shards?: bigint }[],
): StorePlacementLoad[] {
  const members = new Map<string, number>();
  const leaving = new Map<string, number>();
  const extra = new Map<string, number>();
  const ec = new Map<string, number>();
  const inc = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  for (const g of groups) {
    for (const m of g?.members ?? []) {
      inc(members, m.storeId);
      if (m.leaving) inc(leaving, m.storeId);
    }
    for (const m of g?.ecMembers ?? []) inc(ec, m.storeId);
  }
  for (const e of extras) for (const r of e.replicas) inc(extra, r.storeId);
  return [...stores]
    .sort((a, b) => (a.storeId < b.storeId ? -1 : 1))
    .map((s) => {
      const n = members.get(s.storeId) ?? 0;
      const x = extra.get(s.storeId) ?? 0;
      const e = ec.get(s.storeId) ?? 0;
      return create(StorePlacementLoadSchema, {
        storeId: s.storeId,
        memberships: n,
        leaving: leaving.get(s.storeId) ?? 0,
        extraReplicas: x,
        draining: s.draining,
        drained: s.draining && n === 0 && x === 0 && e === 0,
        ecMemberships: e,
        shards: s.shards ?? 0n,
      });
    });
}
