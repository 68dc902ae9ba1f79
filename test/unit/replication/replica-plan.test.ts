import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { TaskPriority } from '../../../gen/haystack/v1/replication_pb.js';
import type { StoreView } from '../../../internal/replication/placement.js';
import {
  copyPriority,
  copyStillNeeded,
  liveHolders,
  type PlanConfig,
  planReplicas,
  removalStillNeeded,
  replicaStatus,
} from '../../../internal/replication/replica-plan.js';

const cfg: PlanConfig = { minReplicaCount: 2, defaultReplicaCount: 3 };
const count = fc.integer({ min: 0, max: 8 });
const counts = fc.record({
  live: count,
  target: fc.integer({ min: 1, max: 8 }),
  copies: count,
  removals: count,
});

const store = (storeId: string, health: StoreHealth): StoreView => ({
  storeId,
  address: storeId,
  zone: '',
  health,
  freeBytes: 1n << 30n,
});

describe('per-blob replica plan (v1 layout)', () => {
  it('copies exactly the shortfall, never over the target, and drops the waiting removals', () => {
    fc.assert(
      fc.property(counts, (c) => {
        const p = planReplicas(c, cfg);
        if (p.action !== 'copy') return;
        expect(c.live).toBeGreaterThan(0);
        expect(p.need).toBe(c.target - c.live - c.copies);
        expect(p.need).toBeGreaterThan(0);
        expect(c.live + c.copies + p.need).toBe(c.target);
        expect(p.cancelRemovals).toBe(true);
      }),
    );
  });

  it('drops one replica only when over target with nothing queued for the blob', () => {
    fc.assert(
      fc.property(counts, (c) => {
        const drop = planReplicas(c, cfg).action === 'drop';
        expect(drop).toBe(c.live > c.target && c.copies === 0 && c.removals === 0);
      }),
    );
  });

  it('does nothing for a blob with no live replica, or one at its target', () => {
    fc.assert(
      fc.property(counts, (c) => {
        expect(planReplicas({ ...c, live: 0 }, cfg)).toEqual({ action: 'none' });
        expect(planReplicas({ ...c, live: c.target, copies: 0 }, cfg)).toEqual({ action: 'none' });
      }),
    );
  });

  it('orders copy priorities: below minimum, raised target, below default, else', () => {
    expect(copyPriority(1, 3, cfg)).toBe(TaskPriority.URGENT);
    expect(copyPriority(1, 5, cfg)).toBe(TaskPriority.URGENT);
    expect(copyPriority(3, 5, cfg)).toBe(TaskPriority.HIGH);
    expect(copyPriority(2, 3, cfg)).toBe(TaskPriority.MEDIUM);
    expect(copyPriority(3, 3, cfg)).toBe(TaskPriority.LOW);
    expect(planReplicas({ live: 1, target: 3, copies: 0, removals: 2 }, cfg)).toEqual({
      action: 'copy',
      need: 2,
      priority: TaskPriority.URGENT,
      cancelRemovals: true,
    });
  });

  it('reports under, over and unavailable against the target', () => {
    expect(replicaStatus(0, 3)).toEqual({ under: true, over: false, unavailable: true });
    expect(replicaStatus(3, 3)).toEqual({ under: false, over: false, unavailable: false });
    expect(replicaStatus(4, 3)).toEqual({ under: false, over: true, unavailable: false });
  });

  it('counts live holders: not DOWN, not unknown, not known corrupt', () => {
    const stores = new Map([
      ['a', store('a', StoreHealth.HEALTHY)],
      ['b', store('b', StoreHealth.DOWN)],
      ['c', store('c', StoreHealth.DEGRADED)],
      ['d', store('d', StoreHealth.UNSPECIFIED)],
      ['e', store('e', StoreHealth.HEALTHY)],
    ]);
    expect(liveHolders(['a', 'b', 'c', 'd', 'e', 'gone'], stores)).toEqual(['a', 'c', 'e']);
    expect(liveHolders(['a', 'b', 'c', 'e'], stores, new Set(['e']))).toEqual(['a', 'c']);
  });

  it('re-checks a task when it runs: a copy while short, a removal while the others keep max(target, min)', () => {
    expect(copyStillNeeded(2, 3)).toBe(true);
    expect(copyStillNeeded(3, 3)).toBe(false);
    expect(removalStillNeeded(['a', 'b', 'c', 'd'], 'd', 3, cfg)).toBe(true);
    expect(removalStillNeeded(['a', 'b', 'c'], 'c', 3, cfg)).toBe(false);
    // The replica to drop is not live (its store is DOWN): the live ones must keep the target.
    expect(removalStillNeeded(['a', 'b', 'c'], 'x', 3, cfg)).toBe(true);
    // Never below the minimum, whatever the target says.
    expect(removalStillNeeded(['a', 'b'], 'b', 1, cfg)).toBe(false);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 1, max: 8 }), (n, target) => {
        const live = Array.from({ length: n }, (_, i) => `s${i}`);
        if (n > 0 && removalStillNeeded(live, 's0', target, cfg)) {
          expect(n - 1).toBeGreaterThanOrEqual(Math.max(target, cfg.minReplicaCount));
        }
      }),
    );
  });
});
