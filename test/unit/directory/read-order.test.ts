import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { readOrder } from '../../../internal/directory/health.js';

const healths = [StoreHealth.HEALTHY, StoreHealth.DEGRADED, StoreHealth.DOWN, StoreHealth.UNSPECIFIED];

describe('readOrder', () => {
  it('puts healthy before degraded and leaves down and unknown stores out', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...healths), { maxLength: 8 }), (hs) => {
        const replicas = hs.map((health, i) => ({ id: i, health }));
        const order = readOrder(replicas);
        expect(order.map((r) => r.id).sort()).toEqual(
          replicas
            .filter((r) => r.health === StoreHealth.HEALTHY || r.health === StoreHealth.DEGRADED)
            .map((r) => r.id)
            .sort(),
        );
        const firstDegraded = order.findIndex((r) => r.health === StoreHealth.DEGRADED);
        if (firstDegraded >= 0)
          expect(order.slice(firstDegraded).every((r) => r.health === StoreHealth.DEGRADED)).toBe(true);
      }),
    );
  });

  it('spreads first places evenly over equally healthy replicas', () => {
    const replicas = [0, 1, 2, 3].map((id) => ({ id, health: StoreHealth.HEALTHY }));
    const firsts = [0, 0, 0, 0];
    for (let i = 0; i < 4000; i++) firsts[readOrder(replicas)[0]!.id]!++;
    // Each replica leads about a quarter of the time (1000 ± a wide margin).
    for (const n of firsts) expect(n).toBeGreaterThan(800);
    for (const n of firsts) expect(n).toBeLessThan(1200);
  });
});
