import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';

/** What allocation knows about one store. */
export interface AllocationCandidate {
  storeId: string;
  address: string;
  zone: string;
  health: StoreHealth;
  writable: boolean;
  freeBytes: bigint;
  /** Being drained (StoreRecord.draining): gets no new blob. */
  draining?: boolean;
}

export type AllocationResult =
  | { ok: true; stores: AllocationCandidate[] }
  | { ok: false; code: 'unavailable' | 'exhausted'; message: string };

/**
 * Chooses `count` distinct stores for a blob of `size` bytes (pure).
 *
 * Eligible: HEALTHY, writable, and free bytes minus `minFreeBytes` at least `size`.
 * Spread: each pick goes to the zone with the fewest picks so far (unlabelled
 * stores form one zone ""), taking that zone's store with the most free space;
 * zones tie-break by their best store's free space, then name. The first store is
 * the one with the most free space overall among the picks' order.
 *
 * Too few HEALTHY writable stores is UNAVAILABLE (wait or fix the stores), unless
 * every store is HEALTHY and the missing ones are merely full (not writable): then,
 * as when enough are writable but too few have room, RESOURCE_EXHAUSTED (add
 * capacity). Both messages say what each store lacks.
 */
export function allocateStores(opts: {
  candidates: readonly AllocationCandidate[];
  count: number;
  size: bigint;
  minFreeBytes: bigint;
}): AllocationResult {
  const { candidates, count, size, minFreeBytes } = opts;
  const sortedAll = [...candidates].sort((a, b) => cmp(a.storeId, b.storeId));
  const up = sortedAll.filter((c) => c.health === StoreHealth.HEALTHY && c.writable);
  const room = (c: AllocationCandidate) => c.freeBytes - minFreeBytes;
  const eligible = up.filter((c) => room(c) >= size);

  if (up.length < count) {
    const why = sortedAll
      .filter((c) => !(c.health === StoreHealth.HEALTHY && c.writable))
      .map(
        (c) => `${c.storeId} is ${c.health === StoreHealth.HEALTHY ? 'not writable' : healthName(c.health)}`,
      );
    // Every store is up but some are full (not writable): that is a capacity
    // problem, not an outage, and retrying will not help.
    const allFull = candidates.length >= count && sortedAll.every((c) => c.health === StoreHealth.HEALTHY);
    return {
      ok: false,
      code: allFull ? 'exhausted' : 'unavailable',
      message:
        `need ${count} healthy writable stores, have ${up.length}` +
        (why.length ? `: ${why.join(', ')}` : candidates.length === 0 ? ': no store has registered' : '') +
        (allFull
          ? '; the stores are full: add stores or disk space, or delete blobs and compact'
          : '; start or repair stores, or ask for fewer replicas'),
    };
  }
  if (eligible.length < count) {
    const why = up.filter((c) => room(c) < size).map((c) => `${c.storeId} has ${fmtBytes(c.freeBytes)} free`);
    return {
      ok: false,
      code: 'exhausted',
      message:
        `need ${count} stores with room for ${fmtBytes(size)} (plus MIN_FREE_BYTES ${fmtBytes(minFreeBytes)} kept free), ` +
        `have ${eligible.length}: ${why.join(', ')}; add stores or disk space, or delete blobs`,
    };
  }

  const byZone = new Map<string, AllocationCandidate[]>();
  for (const c of eligible) {
    const list = byZone.get(c.zone) ?? [];
    list.push(c);
    byZone.set(c.zone, list);
  }
  for (const list of byZone.values()) {
    list.sort((a, b) =>
      a.freeBytes === b.freeBytes ? cmp(a.storeId, b.storeId) : a.freeBytes > b.freeBytes ? -1 : 1,
    );
  }
  const picks = new Map<string, number>();
  const chosen: AllocationCandidate[] = [];
  while (chosen.length < count) {
    let bestZone: string | undefined;
    for (const [zone, list] of byZone) {
      if (list.length === 0) continue;
      if (bestZone === undefined) {
        bestZone = zone;
        continue;
      }
      const pz = picks.get(zone) ?? 0;
      const pb = picks.get(bestZone) ?? 0;
      const fz = (list[0] as AllocationCandidate).freeBytes;
      const fb = ((byZone.get(bestZone) as AllocationCandidate[])[0] as AllocationCandidate).freeBytes;
      if (pz < pb || (pz === pb && (fz > fb || (fz === fb && zone < bestZone)))) bestZone = zone;
    }
    if (bestZone === undefined) break; // cannot happen: eligible.length >= count
    const list = byZone.get(bestZone) as AllocationCandidate[];
    chosen.push(list.shift() as AllocationCandidate);
    picks.set(bestZone, (picks.get(bestZone) ?? 0) + 1);
  }
  return { ok: true, stores: chosen };
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function healthName(h: StoreHealth): string {
  return StoreHealth[h] ?? String(h);
}

export function fmtBytes(n: bigint): string {
  const v = Number(n);
  if (v < 0) return `-${fmtBytes(-n)}`;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let x = v;
  let u = 0;
  while (x >= 1024 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${x.toFixed(x < 10 ? 1 : 0)} ${units[u]}`;
}
