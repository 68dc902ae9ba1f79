import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  coolLine,
  decideTarget,
  type PolicyConfig,
  rawTarget,
} from '../../../internal/replication/policy.js';

const cfg: PolicyConfig = {
  defaultReplicaCount: 3,
  minReplicaCount: 2,
  maxReplicaCount: 5,
  accessRateThreshold: 60,
  highAccessThreshold: 150,
  coolDownThreshold: 60,
  hysteresis: 0.2,
  deReplicationGracePeriodMs: 120_000,
};

describe('target policy', () => {
  it('maps rates to targets at the thresholds', () => {
    expect(rawTarget(0, cfg)).toBe(3);
    expect(rawTarget(59.9, cfg)).toBe(3);
    expect(rawTarget(60, cfg)).toBe(4);
    expect(rawTarget(149, cfg)).toBe(4);
    expect(rawTarget(150, cfg)).toBe(5);
    expect(rawTarget(1e9, cfg)).toBe(5);
    expect(rawTarget(1e9, { ...cfg, maxReplicaCount: 3 })).toBe(3);
  });

  it('rises at once', () => {
    expect(decideTarget({ rate: 200, current: 3, coolSince: undefined, now: 0 }, cfg).target).toBe(5);
    expect(decideTarget({ rate: 70, current: 0, coolSince: undefined, now: 0 }, cfg).target).toBe(4);
  });

  it('falls only after the whole grace period, to no less than the default', () => {
    let d = decideTarget({ rate: 10, current: 5, coolSince: undefined, now: 1000 }, cfg);
    expect(d).toEqual({ target: 5, coolSince: 1000 });
    d = decideTarget({ rate: 10, current: 5, coolSince: d.coolSince, now: 120_999 }, cfg);
    expect(d.target).toBe(5);
    // Warm again: the clock restarts.
    d = decideTarget({ rate: 100, current: 5, coolSince: d.coolSince, now: 121_000 }, cfg);
    expect(d).toEqual({ target: 5, coolSince: undefined });
    d = decideTarget({ rate: 0, current: 5, coolSince: undefined, now: 200_000 }, cfg);
    d = decideTarget({ rate: 0, current: 5, coolSince: d.coolSince, now: 320_000 }, cfg);
    expect(d.target).toBe(3);
  });

  it('clamps a target set out of range', () => {
    expect(decideTarget({ rate: 0, current: 9, coolSince: undefined, now: 0 }, cfg).target).toBe(5);
    expect(decideTarget({ rate: 0, current: 1, coolSince: undefined, now: 0 }, cfg).target).toBe(3);
  });

  it('has hysteresis at the access threshold', () => {
    expect(coolLine(4, cfg)).toBeCloseTo(48);
    expect(coolLine(5, cfg)).toBe(60);
    // A blob raised to 4 at 60/min and now at 55/min is not cool.
    const d = decideTarget({ rate: 55, current: 4, coolSince: undefined, now: 0 }, cfg);
    expect(d).toEqual({ target: 4, coolSince: undefined });
  });

  it('keeps every target within [max(min, default), max] and never drops before the grace period', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.tuple(fc.double({ min: 0, max: 500, noNaN: true }), fc.integer({ min: 1, max: 30_000 })),
          {
            maxLength: 200,
          },
        ),
        fc.integer({ min: 0, max: 5 }),
        (steps, start) => {
          let current = start;
          let coolSince: number | undefined;
          let now = 0;
          let lastRaise = 0;
          let lastWarm = 0;
          for (const [rate, dt] of steps) {
            now += dt;
            const d = decideTarget({ rate, current, coolSince, now }, cfg);
            expect(d.target).toBeGreaterThanOrEqual(3);
            expect(d.target).toBeLessThanOrEqual(5);
            if (d.target > Math.max(current, 3)) lastRaise = now;
            if (d.target < current && current > 3) {
              // Every fall follows a full grace period of cool readings.
              expect(now - Math.max(lastRaise, lastWarm)).toBeGreaterThanOrEqual(
                cfg.deReplicationGracePeriodMs,
              );
              expect(d.target).toBeGreaterThanOrEqual(rawTarget(rate, cfg));
            }
            if (rate >= coolLine(Math.max(current, 3), cfg)) lastWarm = now;
            current = d.target;
            coolSince = d.coolSince;
          }
        },
      ),
    );
  });

  it('never flaps faster than one change per grace period with a rate hovering at a threshold', () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 50, max: 70, noNaN: true }), { minLength: 50, maxLength: 300 }),
        (rates) => {
          let current = 3;
          let coolSince: number | undefined;
          let changes = 0;
          rates.forEach((rate, i) => {
            const d = decideTarget({ rate, current, coolSince, now: i * 10_000 }, cfg);
            if (d.target !== current) changes++;
            current = d.target;
            coolSince = d.coolSince;
          });
          // 50..70 never falls below the 48/min cool line of target 4: at most one change.
          expect(changes).toBeLessThanOrEqual(1);
        },
      ),
    );
  });
});
