import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import {
  chooseSource,
  chooseTargets,
  chooseVictim,
  type PlacementContext,
  type StoreView,
} from '../../../internal/replication/placement.js';

const GiB = 1024n ** 3n;

function ctx(stores: Partial<StoreView>[], load: Record<string, number> = {}): PlacementContext {
  const m = new Map<string, StoreView>();
  for (const s of stores) {
    const v: StoreView = {
      storeId: '',
      address: '',
      zone: '',
      health: StoreHealth.HEALTHY,
      freeBytes: 10n * GiB,
      ...s,
    };
    m.set(v.storeId, v);
  }
  return { stores: m, load: (id) => load[id] ?? 0 };
}

describe('placement', () => {
  it('picks healthy stores not holding the blob, spread over zones, most free space first', () => {
    const c = ctx([
      { storeId: 'a1', zone: 'a', freeBytes: 50n * GiB },
      { storeId: 'a2', zone: 'a', freeBytes: 90n * GiB },
      { storeId: 'b1', zone: 'b', freeBytes: 20n * GiB },
      { storeId: 'c1', zone: 'c', freeBytes: 10n * GiB },
      { storeId: 'c2', zone: 'c', freeBytes: 99n * GiB, health: StoreHealth.DEGRADED },
      { storeId: 'd1', zone: 'd', freeBytes: 99n * GiB, health: StoreHealth.DOWN },
    ]);
    expect(chooseTargets(['a1'], 1000n, 3, c).map((s) => s.storeId)).toEqual(['b1', 'c1', 'a2']);
    expect(chooseTargets(['a1', 'b1'], 1000n, 1, c).map((s) => s.storeId)).toEqual(['c1']);
    expect(chooseTargets([], 1000n, 1, c, new Set(['a2'])).map((s) => s.storeId)).toEqual(['a1']);
  });

  it('skips stores without room and blocked stores', () => {
    const c = ctx([
      { storeId: 's1', freeBytes: 100n },
      { storeId: 's2', freeBytes: 10n * GiB },
      { storeId: 's3', freeBytes: 10n * GiB },
    ]);
    c.blocked = (id) => id === 's3';
    expect(chooseTargets([], 1000n, 3, c).map((s) => s.storeId)).toEqual(['s2']);
  });

  it('copies from a live, least loaded replica, never an excluded one', () => {
    const c = ctx(
      [
        { storeId: 's1', health: StoreHealth.DOWN },
        { storeId: 's2', health: StoreHealth.DEGRADED },
        { storeId: 's3' },
        { storeId: 's4' },
      ],
      { s3: 2, s4: 1 },
    );
    expect(chooseSource(['s1', 's2', 's3', 's4'], c)?.storeId).toBe('s4');
    expect(chooseSource(['s1', 's2', 's3', 's4'], c, new Set(['s3', 's4']))?.storeId).toBe('s2');
    expect(chooseSource(['s1'], c)).toBeUndefined();
  });

  it('drops from the most crowded zone, then the store with least free space / most load', () => {
    const c = ctx(
      [
        { storeId: 'a1', zone: 'a', freeBytes: 5n * GiB },
        { storeId: 'a2', zone: 'a', freeBytes: 8n * GiB },
        { storeId: 'b1', zone: 'b', freeBytes: 1n * GiB },
        { storeId: 'x', zone: 'x', freeBytes: 1n, health: StoreHealth.DOWN },
      ],
      {},
    );
    expect(chooseVictim(['a1', 'a2', 'b1', 'x'], c)?.storeId).toBe('a1');
    expect(chooseVictim(['a2', 'b1'], c)?.storeId).toBe('b1');
    const tie = ctx([{ storeId: 'p' }, { storeId: 'q' }], { q: 3 });
    expect(chooseVictim(['p', 'q'], tie)?.storeId).toBe('q');
  });
});
