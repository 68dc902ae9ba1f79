import { clone, create } from '@bufbuild/protobuf';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import {
  type PlacementGroup,
  PlacementGroupSchema,
  type PlacementMember,
  PlacementMemberSchema,
  PlacementMemberState,
} from '../../gen/haystack/v1/metadata_pb.js';
import { hashKey64 } from '../common/key-hash.js';

/**
 * Where placement groups live (pure). The rules:
 *
 * 1. Eligible stores are HEALTHY, writable and not draining; nothing else gets a
 *    new membership.
 * 2. A group never holds a store twice.
 * 3. Each pick goes to the eligible store with the fewest memberships so far
 *    (balance), preferring a zone the group does not use yet (failure domains),
 *    then the highest rendezvous score hash(group, store) (Thaler & Ravishankar's
 *    highest-random-weight hashing), so the outcome is deterministic and does not
 *    depend on the order stores registered in.
 * 4. A brand-new placement makes every member ACTIVE: an empty cluster has nothing
 *    to copy. A replacement member is JOINING: it takes writes at once and serves
 *    reads only after the replication manager has backfilled it.
 * 5. A member whose store goes DOWN is demoted to JOINING at once, when the group
 *    keeps another ACTIVE member: it serves no reads when it returns until the
 *    replication manager has brought it up to date, so writes and deletes may
 *    skip it meanwhile (gateways skip only JOINING members that are DOWN).
 * 6. A lost member (DOWN past PLACEMENT_REPLACE_AFTER) is replaced only when the
 *    group keeps an ACTIVE member to backfill from and an eligible store exists;
 *    otherwise the group keeps it and waits. A lost member that is leaving (a
 *    drain or balance move, placement-moves.ts) is not replaced: its replacement
 *    exists already, and the member goes once that one is ACTIVE.
 * 7. Members are copied whole when a group changes (leaving flag included), and
 *    the group keeps its cold-tier ec_members.
 * 8. A lost EC member (the cold tier's shard store for one index) is swapped in
 *    place for a JOINING store not among the group's EC members (it may be a
 *    member); the replication manager rebuilds its shards from k others and then
 *    marks it ACTIVE. EC members are never demoted: shards are immutable.
 */

export interface PlacementCandidate {
  storeId: string;
  zone: string;
  health: StoreHealth;
  writable: boolean;
  /** Being drained by an operator (StoreRecord.draining): takes no new membership. */
  draining?: boolean;
}

export type InitialPlacement = { ok: true; groups: PlacementGroup[] } | { ok: false; message: string };

export const eligible = (c: PlacementCandidate) =>
  c.health === StoreHealth.HEALTHY && c.writable && !c.draining;

/** A copy of a member with another state (every other field kept). */
export function withState(m: PlacementMember, state: PlacementMemberState): PlacementMember {
  const copy = clone(PlacementMemberSchema, m);
  copy.state = state;
  return copy;
}

/** A copy of a group with other EC members (kept when `ecMembers` is empty). */
export function withEcMembers(g: PlacementGroup, ecMembers: PlacementMember[]): PlacementGroup {
  if (ecMembers.length === 0) return g;
  const copy = clone(PlacementGroupSchema, g);
  copy.ecMembers = ecMembers;
  return copy;
}

/** A copy of a group with other members (epoch and ec_members kept). */
export function withMembers(g: PlacementGroup, members: PlacementMember[]): PlacementGroup {
  const copy = clone(PlacementGroupSchema, g);
  copy.members = members;
  return copy;
}

const scratch = new Uint32Array(2);
function score(group: number, storeId: string): number {
  hashKey64(`${group}/${storeId}`, scratch);
  return scratch[1] as number;
}

/** Memberships per store. */
export function loads(groups: readonly (PlacementGroup | undefined)[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const g of groups) for (const x of g?.members ?? []) m.set(x.storeId, (m.get(x.storeId) ?? 0) + 1);
  return m;
}

/** The best eligible store for `group` that is not in `taken` (rule 3), or undefined. */
export function pick(
  group: number,
  candidates: readonly PlacementCandidate[],
  taken: ReadonlySet<string>,
  usedZones: ReadonlySet<string>,
  load: ReadonlyMap<string, number>,
): PlacementCandidate | undefined {
  let best: PlacementCandidate | undefined;
  let bestKey: [number, number, number] | undefined;
  for (const c of candidates) {
    if (!eligible(c) || taken.has(c.storeId)) continue;
    const key: [number, number, number] = [
      load.get(c.storeId) ?? 0,
      usedZones.has(c.zone) ? 1 : 0,
      -score(group, c.storeId),
    ];
    if (
      !bestKey ||
      key[0] < bestKey[0] ||
      (key[0] === bestKey[0] && (key[1] < bestKey[1] || (key[1] === bestKey[1] && key[2] < bestKey[2])))
    ) {
      best = c;
      bestKey = key;
    }
  }
  return best;
}

/** A first placement of `groupCount` groups with `replicaCount` ACTIVE members each. */
export function initialPlacement(
  candidates: readonly PlacementCandidate[],
  groupCount: number,
  replicaCount: number,
): InitialPlacement {
  const ok = candidates.filter(eligible);
  if (ok.length < replicaCount) {
    return {
      ok: false,
      message: `placement needs ${replicaCount} healthy writable stores, ${ok.length} registered so far`,
    };
  }
  const groups: PlacementGroup[] = [];
  const load = new Map<string, number>();
  for (let g = 0; g < groupCount; g++) {
    const taken = new Set<string>();
    const zones = new Set<string>();
    const members = [];
    for (let i = 0; i < replicaCount; i++) {
      const c = pick(g, ok, taken, zones, load) as PlacementCandidate; // ok.length >= replicaCount
      taken.add(c.storeId);
      zones.add(c.zone);
      load.set(c.storeId, (load.get(c.storeId) ?? 0) + 1);
      members.push(create(PlacementMemberSchema, { storeId: c.storeId, state: PlacementMemberState.ACTIVE }));
    }
    groups.push(create(PlacementGroupSchema, { group: g, members }));
  }
  return { ok: true, groups };
}

/**
 * The groups that change when the stores in `lost` are replaced (rules 4 and 6):
 * each lost member is swapped, in place, for a JOINING member. Groups that cannot
 * be helped are left out.
 */
export function replaceLostMembers(
  groups: readonly (PlacementGroup | undefined)[],
  candidates: readonly PlacementCandidate[],
  lost: ReadonlySet<string>,
): PlacementGroup[] {
  const load = loads(groups);
  const zoneOf = new Map(candidates.map((c) => [c.storeId, c.zone]));
  const usable = candidates.filter((c) => !lost.has(c.storeId));
  /**
   * `list` with each lost store swapped for a JOINING pick not in the list (kept,
   * flags and all, when none fits). A leaving member is not replaced: its
   * replacement exists already (placement-moves.ts).
   */
  const swap = (group: number, list: readonly PlacementMember[]) => {
    const taken = new Set(list.map((m) => m.storeId));
    const zones = new Set(list.filter((m) => !lost.has(m.storeId)).map((m) => zoneOf.get(m.storeId) ?? ''));
    let replaced = false;
    const out = list.map((m) => {
      const c = lost.has(m.storeId) && !m.leaving ? pick(group, usable, taken, zones, load) : undefined;
      if (!c) return clone(PlacementMemberSchema, m);
      taken.add(c.storeId);
      zones.add(c.zone);
      load.set(c.storeId, (load.get(c.storeId) ?? 0) + 1);
      load.set(m.storeId, (load.get(m.storeId) ?? 1) - 1);
      replaced = true;
      return create(PlacementMemberSchema, { storeId: c.storeId, state: PlacementMemberState.JOINING });
    });
    return { out, replaced };
  };
  const changed: PlacementGroup[] = [];
  for (const g of groups) {
    if (!g) continue;
    const keepsActive = g.members.some(
      (m) => !lost.has(m.storeId) && m.state === PlacementMemberState.ACTIVE,
    );
    // Members: only with an ACTIVE member left to backfill from (rule 6).
    const members =
      g.members.some((m) => lost.has(m.storeId) && !m.leaving) && keepsActive
        ? swap(g.group, g.members)
        : undefined;
    // EC members (the cold tier): the manager rebuilds the new store's shards from k others, then marks it ACTIVE.
    const ec = g.ecMembers.some((m) => lost.has(m.storeId)) ? swap(g.group, g.ecMembers) : undefined;
    if (members?.replaced || ec?.replaced) {
      const copy = clone(PlacementGroupSchema, g);
      if (members?.replaced) copy.members = members.out;
      if (ec?.replaced) copy.ecMembers = ec.out;
      changed.push(copy);
    }
  }
  return changed;
}

/** The groups that change when the ACTIVE members on `down` stores are demoted (rule 5). */
export function demoteDownMembers(
  groups: readonly (PlacementGroup | undefined)[],
  down: ReadonlySet<string>,
): PlacementGroup[] {
  const changed: PlacementGroup[] = [];
  for (const g of groups) {
    if (!g) continue;
    const activeUp = g.members.filter((m) => m.state === PlacementMemberState.ACTIVE && !down.has(m.storeId));
    const demote = g.members.some((m) => m.state === PlacementMemberState.ACTIVE && down.has(m.storeId));
    if (!demote || activeUp.length === 0) continue;
    changed.push(
      withMembers(
        g,
        g.members.map((m) => withState(m, down.has(m.storeId) ? PlacementMemberState.JOINING : m.state)),
      ),
    );
  }
  return changed;
}

/** Problem with a member list for UpdatePlacement, or undefined when it is acceptable. */
export function checkMembers(
  members: readonly { storeId: string; state: PlacementMemberState }[],
  registered: ReadonlySet<string>,
): string | undefined {
  if (members.length === 0) return 'a placement group needs at least one member';
  if (members.length > 16) return `a placement group has at most 16 members, got ${members.length}`;
  const seen = new Set<string>();
  for (const m of members) {
    if (!registered.has(m.storeId)) return `store ${JSON.stringify(m.storeId)} is not registered`;
    if (seen.has(m.storeId)) return `store ${m.storeId} is listed twice`;
    seen.add(m.storeId);
    if (m.state !== PlacementMemberState.ACTIVE && m.state !== PlacementMemberState.JOINING) {
      return `member ${m.storeId} has state ${m.state}: use ACTIVE or JOINING`;
    }
  }
  if (!members.some((m) => m.state === PlacementMemberState.ACTIVE)) {
    return 'a placement group needs at least one ACTIVE member';
  }
  return undefined;
}

/** Most EC members of a group: k + m ≤ 24 + 6 (internal/ec/codec.ts MAX_DATA_SHARDS, MAX_PARITY_SHARDS). */
export const MAX_EC_MEMBERS = 30;

/**
 * Problem with a group's EC member list (shard i on ecMembers[i]) for
 * UpdatePlacement, or undefined: registered stores, none twice, ACTIVE or
 * JOINING, at most MAX_EC_MEMBERS. A store may be both a member and an EC member.
 */
export function checkEcMembers(
  ecMembers: readonly { storeId: string; state: PlacementMemberState }[],
  registered: ReadonlySet<string>,
): string | undefined {
  if (ecMembers.length > MAX_EC_MEMBERS) {
    return `a placement group has at most ${MAX_EC_MEMBERS} EC members (k + m), got ${ecMembers.length}`;
  }
  const seen = new Set<string>();
  for (const [i, m] of ecMembers.entries()) {
    if (!registered.has(m.storeId))
      return `ec_members[${i}]: store ${JSON.stringify(m.storeId)} is not registered`;
    if (seen.has(m.storeId))
      return `ec_members: store ${m.storeId} is listed twice (shards of a stripe need distinct stores)`;
    seen.add(m.storeId);
    if (m.state !== PlacementMemberState.ACTIVE && m.state !== PlacementMemberState.JOINING) {
      return `ec_members[${i}] (${m.storeId}) has state ${m.state}: use ACTIVE or JOINING`;
    }
  }
  return undefined;
}
