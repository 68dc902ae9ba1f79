import { clone } from '@bufbuild/protobuf';
import {
  type PlacementGroup,
  type PlacementMember,
  PlacementMemberSchema,
  PlacementMemberState,
} from '../../gen/haystack/v1/metadata_pb.js';
import type { NeedleFacts } from '../../gen/haystack/v1/store_pb.js';
import {
  chooseSource,
  chooseTargets,
  chooseVictim,
  isKept,
  type PlacementContext,
  type StoreView,
} from './placement.js';

/**
 * Pure decisions of the replication manager in placement mode (the directory maps
 * placement groups to stores; see internal/common/placement.ts). Like policy.ts:
 * no I/O, the rules stated above each function, unit-tested on their own.
 */

/** Store ids of a group's members in a state (all members when undefined). */
export function membersIn(g: PlacementGroup | undefined, state?: PlacementMemberState): string[] {
  return (g?.members ?? []).filter((m) => state === undefined || m.state === state).map((m) => m.storeId);
}

/**
 * The extra replicas a blob should have: its target minus its group's members,
 * never negative. Every member counts, JOINING ones too (they take every write and
 * become readable once backfilled), the same base the directory uses when it
 * decides whether an ExtraReplicas record adds anything.
 */
export function wantedExtras(target: number, g: PlacementGroup): number {
  return Math.max(0, target - g.members.length);
}

export type ExtraPlan =
  | { kind: 'add'; stores: StoreView[] }
  | { kind: 'remove'; storeId: string }
  | { kind: 'none' };

/**
 * What to do about a hot blob's extra replicas.
 *
 * - Fewer live extras (plus copies under way) than wanted: add the difference, on
 *   HEALTHY stores that are neither members nor extras nor excluded, spread over
 *   zones counting the members' and extras' zones (chooseTargets).
 * - More extras than wanted and nothing under way for the blob: remove one, from
 *   the zone holding the most copies (chooseVictim over the extras only; members
 *   are never removed for heat). One at a time, like the per-blob planner.
 * - A DOWN extra, or one on a draining store, still counts as listed (it is
 *   removed first) but not as kept (isKept), so a replacement is placed meanwhile.
 */
export function planExtras(
  o: {
    target: number;
    group: PlacementGroup;
    extras: readonly string[];
    /** Stores with a copy under way for the blob. */
    copying: readonly string[];
    /** True when a removal is queued or running for the blob. */
    removing: boolean;
    exclude: ReadonlySet<string>;
  },
  ctx: PlacementContext,
): ExtraPlan {
  const want = wantedExtras(o.target, o.group);
  const live = o.extras.filter((s) => isKept(ctx.stores.get(s)));
  const need = want - live.length - o.copying.length;
  if (need > 0) {
    if (o.removing) return { kind: 'none' };
    const holders = [...membersIn(o.group), ...o.extras, ...o.copying];
    const stores = chooseTargets(holders, 0n, need, ctx, o.exclude);
    return stores.length > 0 ? { kind: 'add', stores } : { kind: 'none' };
  }
  if (o.extras.length > want && o.copying.length === 0 && !o.removing) {
    const down = o.extras.find((s) => !isKept(ctx.stores.get(s)));
    if (down) return { kind: 'remove', storeId: down };
    const v = chooseVictim(o.extras, ctx);
    if (v) return { kind: 'remove', storeId: v.storeId };
  }
  return { kind: 'none' };
}

/**
 * ACTIVE members to read a blob's facts or bytes from, best first: live,
 * HEALTHY before DEGRADED, least loaded (chooseSource, repeated). JOINING
 * members are never sources: they may not hold the needle yet.
 */
export function activeSources(
  g: PlacementGroup | undefined,
  ctx: PlacementContext,
  exclude: ReadonlySet<string> = new Set(),
): StoreView[] {
  const out: StoreView[] = [];
  const skip = new Set(exclude);
  const ids = membersIn(g, PlacementMemberState.ACTIVE);
  for (;;) {
    const s = chooseSource(ids, ctx, skip);
    if (!s) return out;
    out.push(s);
    skip.add(s.storeId);
  }
}

/** A needle's version: its stamp, and whether it is a tombstone. */
export interface Stamp {
  writtenAtMs: bigint;
  deleted: boolean;
}

/**
 * Stamp order (docs/volume-format.md#stamp-order): of two needles of one id the
 * greater stamp wins; at an equal stamp a tombstone wins (the store's rule on
 * load). Stamps are strictly increasing per id on one store and copies keep them
 * (keep_stamp), so an equal stamp is otherwise the same needle.
 */
export function newer(a: Stamp, b: Stamp | undefined): boolean {
  if (!b) return true;
  if (a.writtenAtMs !== b.writtenAtMs) return a.writtenAtMs > b.writtenAtMs;
  return a.deleted && !b.deleted;
}

/** One needle to bring onto a store: `needle` as held by `from`. */
export interface NeedleCopy {
  needle: NeedleFacts;
  from: string;
  to: string;
}

/**
 * Anti-entropy over one group: given each member's listing (newest needle per
 * id, tombstones included), the newest needle of every id goes to every member
 * that lacks it or holds an older one; the stamp wins, so a delete that reached
 * one member reaches all, and a write that reached only some members before its
 * gateway died reaches the rest. `sources` are the members a live needle may be
 * copied from (a tombstone needs no source). Needles stamped at or after
 * `settledBefore` are left alone: they are probably writes still in flight, and
 * the next round sees them settled.
 */
export function planGroupRepair(
  listings: ReadonlyMap<string, ReadonlyMap<string, NeedleFacts>>,
  o: { sources: ReadonlySet<string>; settledBefore: bigint },
): NeedleCopy[] {
  const newest = new Map<string, { needle: NeedleFacts; holders: string[] }>();
  for (const [storeId, needles] of listings) {
    if (!o.sources.has(storeId)) continue;
    for (const n of needles.values()) {
      const cur = newest.get(n.blobId);
      if (!cur || newer(n, cur.needle)) newest.set(n.blobId, { needle: n, holders: [storeId] });
      else if (!newer(cur.needle, n)) cur.holders.push(storeId);
    }
  }
  const out: NeedleCopy[] = [];
  for (const [id, { needle, holders }] of newest) {
    if (needle.writtenAtMs >= o.settledBefore) continue;
    let i = 0;
    for (const [storeId, needles] of listings) {
      if (holders.includes(storeId)) continue;
      if (!newer(needle, needles.get(id))) continue;
      // Spread the reads over the holders.
      out.push({ needle, from: holders[i++ % holders.length] as string, to: storeId });
    }
  }
  return out;
}

/** A store's (needle count, digest) of one group; absent means it holds none. */
export interface GroupDigest {
  needles: bigint;
  digest: bigint;
}

/**
 * Groups whose members disagree: for each group, the members' digests (an absent
 * one counts as 0 needles, digest 0) must all be equal. Groups with fewer than two
 * members compared never differ.
 */
export function mismatchedGroups(
  groups: readonly PlacementGroup[],
  digests: ReadonlyMap<string, ReadonlyMap<number, GroupDigest>>,
  compared: (g: PlacementGroup) => string[],
): number[] {
  const out: number[] = [];
  for (const g of groups) {
    if (!g) continue;
    const ids = compared(g).filter((s) => digests.has(s));
    if (ids.length < 2) continue;
    const key = (s: string) => {
      const d = digests.get(s)?.get(g.group);
      return d ? `${d.needles}:${d.digest}` : '0:0';
    };
    const first = key(ids[0] as string);
    if (ids.some((s) => key(s) !== first)) out.push(g.group);
  }
  return out;
}

/**
 * The members after a backfilled store becomes ACTIVE: the same members in the
 * same (write) order, that one ACTIVE. Undefined when it is no longer JOINING in
 * the group (someone else changed the group meanwhile: nothing to do).
 */
export function promoted(g: PlacementGroup, storeId: string): PlacementMember[] | undefined {
  const m = g.members.find((x) => x.storeId === storeId);
  if (m?.state !== PlacementMemberState.JOINING) return undefined;
  // Whole copies: a member's other fields (a drain's `leaving`) stay as they are.
  return g.members.map((x) => {
    const copy = clone(PlacementMemberSchema, x);
    if (x.storeId === storeId) copy.state = PlacementMemberState.ACTIVE;
    return copy;
  });
}
