import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { type AllocationCandidate, allocateStores } from '../../../internal/directory/allocation.js';
import { evaluateHealth } from '../../../internal/directory/health.js';

const MiB = 1024n * 1024n;
function store(id: string, free: bigint, opts: Partial<AllocationCandidate> = {}): AllocationCandidate {
  return {
    storeId: id,
    address: `${id}:1`,
    zone: '',
    health: StoreHealth.HEALTHY,
    writable: true,
    freeBytes: free,
    ...opts,
  };
}

describe('allocation', () => {
  it('picks the stores with the most free space', () => {
    const res = allocateStores({
      candidates: [
        store('s1', 500n * MiB),
        store('s2', 900n * MiB),
        store('s3', 700n * MiB),
        store('s4', 800n * MiB),
      ],
      count: 3,
      size: 10n,
      minFreeBytes: 100n * MiB,
    });
    expect(res.ok && res.stores.map((s) => s.storeId)).toEqual(['s2', 's4', 's3']);
  });

  it('spreads across zones before filling one zone', () => {
    const res = allocateStores({
      candidates: [
        store('a1', 900n * MiB, { zone: 'a' }),
        store('a2', 800n * MiB, { zone: 'a' }),
        store('a3', 850n * MiB, { zone: 'a' }),
        store('b1', 200n * MiB, { zone: 'b' }),
        store('c1', 300n * MiB, { zone: 'c' }),
      ],
      count: 3,
      size: 1n,
      minFreeBytes: 0n,
    });
    expect(res.ok && res.stores.map((s) => s.storeId)).toEqual(['a1', 'c1', 'b1']);
    const four = allocateStores({
      candidates: [
        store('a1', 900n, { zone: 'a' }),
        store('a2', 800n, { zone: 'a' }),
        store('b1', 10n, { zone: 'b' }),
      ],
      count: 3,
      size: 1n,
      minFreeBytes: 0n,
    });
    expect(four.ok && four.stores.map((s) => s.storeId)).toEqual(['a1', 'b1', 'a2']);
  });

  it('skips DEGRADED, DOWN, read-only and full stores, and says why when too few remain', () => {
    const candidates = [
      store('s1', 900n * MiB, { health: StoreHealth.DOWN }),
      store('s2', 900n * MiB, { health: StoreHealth.DEGRADED }),
      store('s3', 900n * MiB, { writable: false }),
      store('s4', 900n * MiB),
      store('s5', 900n * MiB),
    ];
    const res = allocateStores({ candidates, count: 3, size: 1n, minFreeBytes: 0n });
    expect(res).toEqual({
      ok: false,
      code: 'unavailable',
      message: expect.stringMatching(
        /^need 3 healthy writable stores, have 2: s1 is DOWN, s2 is DEGRADED, s3 is not writable; /,
      ),
    });
    const two = allocateStores({ candidates, count: 2, size: 1n, minFreeBytes: 0n });
    expect(two.ok && two.stores.map((s) => s.storeId)).toEqual(['s4', 's5']);
    expect(allocateStores({ candidates: [], count: 1, size: 1n, minFreeBytes: 0n })).toMatchObject({
      ok: false,
      message: expect.stringContaining('no store has registered'),
    });
  });

  it('is RESOURCE_EXHAUSTED, not UNAVAILABLE, when every store is up but full (not writable)', () => {
    const full = [
      store('s1', 0n, { writable: false }),
      store('s2', 0n, { writable: false }),
      store('s3', 900n * MiB),
    ];
    expect(allocateStores({ candidates: full, count: 3, size: 1n, minFreeBytes: 0n })).toMatchObject({
      ok: false,
      code: 'exhausted',
      message: expect.stringMatching(/s1 is not writable, s2 is not writable; the stores are full/),
    });
  });

  it('is RESOURCE_EXHAUSTED when healthy stores lack room, counting MIN_FREE_BYTES', () => {
    const res = allocateStores({
      candidates: [store('s1', 150n * MiB), store('s2', 120n * MiB), store('s3', 900n * MiB)],
      count: 3,
      size: 30n * MiB,
      minFreeBytes: 100n * MiB,
    });
    expect(res).toMatchObject({
      ok: false,
      code: 'exhausted',
      message: expect.stringMatching(
        /need 3 stores with room for 30 MiB \(plus MIN_FREE_BYTES 100 MiB kept free\), have 2: s2 has 120 MiB free; add stores/,
      ),
    });
    // Exactly enough room is enough.
    expect(
      allocateStores({
        candidates: [store('s1', 130n * MiB)],
        count: 1,
        size: 30n * MiB,
        minFreeBytes: 100n * MiB,
      }).ok,
    ).toBe(true);
  });

  it('always returns distinct eligible stores, zones as spread as possible (property)', () => {
    const cand = fc.record({
      zone: fc.constantFrom('', 'a', 'b', 'c'),
      free: fc.bigInt({ min: 0n, max: 1000n }),
      health: fc.constantFrom(
        StoreHealth.HEALTHY,
        StoreHealth.HEALTHY,
        StoreHealth.DEGRADED,
        StoreHealth.DOWN,
      ),
      writable: fc.boolean(),
    });
    fc.assert(
      fc.property(fc.array(cand, { maxLength: 12 }), fc.integer({ min: 1, max: 5 }), (cs, count) => {
        const candidates = cs.map((c, i) => store(`s${i}`, c.free, c));
        const res = allocateStores({ candidates, count, size: 100n, minFreeBytes: 50n });
        const eligible = candidates.filter(
          (c) => c.health === StoreHealth.HEALTHY && c.writable && c.freeBytes - 50n >= 100n,
        );
        if (!res.ok) {
          expect(eligible.length).toBeLessThan(count);
          return;
        }
        expect(res.stores).toHaveLength(count);
        expect(new Set(res.stores.map((s) => s.storeId)).size).toBe(count);
        for (const s of res.stores) expect(eligible).toContain(s);
        const zonesAvailable = new Set(eligible.map((c) => c.zone)).size;
        expect(new Set(res.stores.map((s) => s.zone)).size).toBe(Math.min(count, zonesAvailable));
      }),
    );
  });
});

describe('store health', () => {
  const base = { streamOpen: true, streamEnded: false, degradedAfterMs: 100, downAfterMs: 300 };
  it('goes HEALTHY → DEGRADED → DOWN with heartbeat age', () => {
    expect(evaluateHealth({ ...base, sinceLastHeartbeatMs: 0 })).toBe(StoreHealth.HEALTHY);
    expect(evaluateHealth({ ...base, sinceLastHeartbeatMs: 99 })).toBe(StoreHealth.HEALTHY);
    expect(evaluateHealth({ ...base, sinceLastHeartbeatMs: 100 })).toBe(StoreHealth.DEGRADED);
    expect(evaluateHealth({ ...base, sinceLastHeartbeatMs: 300 })).toBe(StoreHealth.DOWN);
  });
  it('is DOWN at once when the stream ended', () => {
    expect(evaluateHealth({ ...base, streamOpen: false, streamEnded: true, sinceLastHeartbeatMs: 1 })).toBe(
      StoreHealth.DOWN,
    );
  });
});
