import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HeatTracker } from '../../../internal/replication/heat.js';

const MIN = 60_000;

function tracker(o: Partial<ConstructorParameters<typeof HeatTracker>[0]> = {}) {
  return new HeatTracker({ alpha: 0.3, periodMs: MIN, stalenessMs: 5 * MIN, maxTrackedBlobs: 1000, ...o });
}

describe('HeatTracker', () => {
  it('matches the seed EWMA for per-minute reports', () => {
    const h = tracker();
    let ewma = 0;
    const counts = [120, 80, 0, 300, 10];
    counts.forEach((c, i) => {
      const now = (i + 1) * MIN;
      h.record('store-1', MIN, c > 0 ? [['a', c]] : [], now);
      ewma = 0.3 * c + 0.7 * ewma;
      expect(h.rate('a', now)).toBeCloseTo(ewma, 6);
    });
  });

  it('does not depend on how often a steady reporter sends', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60),
        fc.integer({ min: 1, max: 1000 }),
        (secs, perMin) => {
          const fast = tracker();
          const slow = tracker();
          const interval = secs * 1000;
          // Ten minutes of steady reads, reported every `secs` s versus every minute.
          for (let t = interval; t <= 10 * MIN; t += interval) {
            fast.record('s', interval, [['a', (perMin * interval) / MIN]], t);
          }
          for (let t = MIN; t <= 10 * MIN; t += MIN) slow.record('s', MIN, [['a', perMin]], t);
          const expected = perMin * (1 - 0.7 ** 10);
          expect(fast.rate('a', 10 * MIN)).toBeCloseTo(expected, 6);
          expect(slow.rate('a', 10 * MIN)).toBeCloseTo(expected, 6);
        },
      ),
      { numRuns: 50 },
    );
  });

  it('sums reporters and reports heat per reporter', () => {
    const h = tracker({ alpha: 1 });
    h.record('store-1', MIN, [['a', 100]], MIN);
    h.record(
      'gateway-1',
      MIN,
      [
        ['a', 50],
        ['b', 7],
      ],
      MIN,
    );
    expect(h.rate('a', MIN)).toBeCloseTo(150);
    expect(h.heat('a', MIN).map((r) => r.reporterId)).toEqual(['store-1', 'gateway-1']);
    expect(h.rate('b', MIN)).toBeCloseTo(7);
    expect(h.rate('zzz', MIN)).toBe(0);
  });

  it('decays between reports and expires a silent reporter', () => {
    const h = tracker();
    h.record('store-1', MIN, [['a', 100]], MIN);
    const r0 = h.rate('a', MIN);
    expect(h.rate('a', 2 * MIN)).toBeCloseTo(r0 * 0.7, 6);
    expect(h.rate('a', MIN + 5 * MIN + 1)).toBe(0);
    h.sweep(MIN + 5 * MIN + 1);
    expect(h.size).toBe(0);
    expect(h.liveReporters(MIN + 5 * MIN + 1)).toEqual([]);
  });

  it('stays within its cap and evicts the coldest blobs', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 1000 }), { minLength: 1, maxLength: 400 }), (rates) => {
        const h = tracker({ alpha: 1, maxTrackedBlobs: 50 });
        rates.forEach((r, i) => {
          h.record('s', MIN, [[`b${i}`, r]], MIN);
          expect(h.size).toBeLessThanOrEqual(50);
        });
        // The hottest blob seen survives any eviction.
        const hottest = rates.indexOf(Math.max(...rates));
        expect(h.rate(`b${hottest}`, MIN)).toBeGreaterThan(0);
      }),
      { numRuns: 50 },
    );
  });

  it('lists the hottest blobs first', () => {
    const h = tracker({ alpha: 1 });
    h.record(
      's',
      MIN,
      [
        ['a', 5],
        ['b', 50],
        ['c', 20],
      ],
      MIN,
    );
    expect(h.hottest(2, MIN).map((x) => x.blobId)).toEqual(['b', 'c']);
  });
});
