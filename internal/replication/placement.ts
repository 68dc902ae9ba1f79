import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';

/**
 * Where copies go, which replica is read from, and which one goes when a blob has
 * too many. Pure functions over the manager's view of the stores.
 */
export interface StoreView {
  storeId: string;
  address: string;
  zone: string;
  health: StoreHealth;
  freeBytes: bigint;
  /** Being drained by an operator (DirectoryService.DrainStore): gets no new copy. */
  draining?: boolean;
}

export interface PlacementContext {
  stores: ReadonlyMap<string, StoreView>;
  /** Running tasks per store (load). */
  load: (storeId: string) => number;
  /** Stores that must not get new work (open circuit breakers). */
  blocked?: (storeId: string) => boolean;
  /** Free space a store must keep after a copy (default 0). */
  minFreeBytes?: bigint;
}

/** A store counts as holding a live replica unless it is DOWN or unknown. */
export function isLive(store: StoreView | undefined): boolean {
  return store !== undefined && store.health !== StoreHealth.DOWN && store.health !== StoreHealth.UNSPECIFIED;
}

/**
 * A replica that counts toward a blob's target: live and not on a draining store
 * (a draining store's copies stay readable, and are sources, until replaced).
 */
export function isKept(store: StoreView | undefined): boolean {
  return isLive(store) && !store?.draining;
}

function zoneCounts(storeIds: Iterable<string>, ctx: PlacementContext): Map<string, number> {
  const m = new Map<string, number>();
  for (const id of storeIds) {
    const s = ctx.stores.get(id);
    if (s && isLive(s)) m.set(s.zone, (m.get(s.zone) ?? 0) + 1);
  }
  return m;
}

/**
 * Up to `n` new stores for a blob: HEALTHY, not draining, not holding it, not
 * excluded or blocked, with room for it; spread across zones first (the zone with the fewest
 * replicas of the blob wins), then the most free space, then the least load.
 */
export function chooseTargets(
  holders: readonly string[],
  size: bigint,
  n: number,
  ctx: PlacementContext,
  exclude: ReadonlySet<string> = new Set(),
): StoreView[] {
  const minFree = ctx.minFreeBytes ?? 0n;
  const held = new Set(holders);
  const candidates = [...ctx.stores.values()].filter(
    (s) =>
      s.health === StoreHealth.HEALTHY &&
      !s.draining &&
      !held.has(s.storeId) &&
      !exclude.has(s.storeId) &&
      !ctx.blocked?.(s.storeId) &&
      s.freeBytes >= size + minFree,
  );
  const zones = zoneCounts(holders, ctx);
  const chosen: StoreView[] = [];
  while (chosen.length < n && candidates.length > 0) {
    candidates.sort(
      (a, b) =>
        (zones.get(a.zone) ?? 0) - (zones.get(b.zone) ?? 0) ||
        cmpBig(b.freeBytes, a.freeBytes) ||
        ctx.load(a.storeId) - ctx.load(b.storeId) ||
        (a.storeId < b.storeId ? -1 : 1),
    );
    const pick = candidates.shift()!;
    chosen.push(pick);
    zones.set(pick.zone, (zones.get(pick.zone) ?? 0) + 1);
  }
  return chosen;
}

/** The replica to copy from: live, not excluded (corrupt), HEALTHY before DEGRADED, least loaded. */
export function chooseSource(
  holders: readonly string[],
  ctx: PlacementContext,
  exclude: ReadonlySet<string> = new Set(),
): StoreView | undefined {
  return holders
    .map((id) => ctx.stores.get(id))
    .filter((s): s is StoreView => s !== undefined && isLive(s) && !exclude.has(s.storeId))
    .sort(
      (a, b) =>
        healthRank(a.health) - healthRank(b.health) ||
        ctx.load(a.storeId) - ctx.load(b.storeId) ||
        (a.storeId < b.storeId ? -1 : 1),
    )[0];
}

/**
 * The replica to drop from an over-replicated blob: from the zone holding the
 * most replicas (so the spread survives), then the store with the least free
 * space, then the most load. Only live replicas are candidates.
 */
export function chooseVictim(holders: readonly string[], ctx: PlacementContext): StoreView | undefined {
  const zones = zoneCounts(holders, ctx);
  return holders
    .map((id) => ctx.stores.get(id))
    .filter((s): s is StoreView => s !== undefined && isLive(s))
    .sort(
      (a, b) =>
        (zones.get(b.zone) ?? 0) - (zones.get(a.zone) ?? 0) ||
        cmpBig(a.freeBytes, b.freeBytes) ||
        ctx.load(b.storeId) - ctx.load(a.storeId) ||
        (a.storeId < b.storeId ? 1 : -1),
    )[0];
}

function healthRank(h: StoreHealth): number {
  return h === StoreHealth.HEALTHY ? 0 : h === StoreHealth.DEGRADED ? 1 : 2;
}

function cmpBig(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
