import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type ConfigError, EnvReader } from '../../../internal/config/env.js';
import { readEcConfig } from '../../../internal/ec/config.js';
import { chooseCode, defaultCode, rawFactor } from '../../../internal/ec/params.js';
import { decideTier, type TierInputs } from '../../../internal/ec/tier-policy.js';

const T = { coldRatePerMin: 0.1, coldAfterMs: 60_000, warmRatePerMin: 6 };
const base: TierInputs = {
  tier: 'replicated',
  ratePerMin: 0,
  raised: false,
  writtenAtMs: 0,
  coolSinceMs: undefined,
  nowMs: 1_000_000,
};

describe('cold tier code by store count', () => {
  it('fits the store count and keeps cold data at or below 1.5x from 6 stores', () => {
    for (let n = 3; n <= 40; n++) {
      const c = defaultCode(n);
      expect(c, `n=${n}`).toBeDefined();
      if (!c) continue;
      expect(c.k + c.m).toBeLessThanOrEqual(n);
      if (n >= 6) expect(rawFactor(c)).toBeLessThanOrEqual(1.5);
      if (n >= 4) expect(c.m).toBeGreaterThanOrEqual(2);
    }
    expect(defaultCode(2)).toBeUndefined();
    expect(defaultCode(14)).toEqual({ k: 10, m: 4 });
  });

  it('refuses codes that do not fit or survive too few losses, with the reason', () => {
    const s = { dataShards: 0, parityShards: 0, minRedundancy: 2 };
    expect(chooseCode(6, s)).toEqual({ code: { k: 4, m: 2 } });
    expect(chooseCode(3, s)).toEqual({
      reason: expect.stringMatching(/survives 1 lost store.*EC_MIN_REDUNDANCY=2/),
    });
    expect(chooseCode(3, { ...s, minRedundancy: 1 })).toEqual({ code: { k: 2, m: 1 } });
    expect(chooseCode(2, s)).toEqual({ reason: expect.stringMatching(/at least 3 stores/) });
    expect(chooseCode(10, { dataShards: 10, parityShards: 4, minRedundancy: 2 })).toEqual({
      reason: expect.stringMatching(/needs 14 distinct stores; the cluster has 10/),
    });
  });

  it('reads EC_* variables and names the bad ones', () => {
    const ok = readEcConfig(new EnvReader({ EC_ENABLED: 'true', EC_COLD_AFTER: '5m' }));
    expect(ok).toMatchObject({ enabled: true, coldAfterMs: 300_000, dataShards: 0, minRedundancy: 2 });
    const r = new EnvReader({ EC_DATA_SHARDS: '30', EC_PARITY_SHARDS: '0', EC_WARM_RATE: '0.05' });
    readEcConfig(r);
    const problems = (() => {
      try {
        r.done();
      } catch (e) {
        return (e as ConfigError).problems.join('\n');
      }
      return '';
    })();
    expect(problems).toMatch(/EC_DATA_SHARDS="30"/);
    expect(problems).toMatch(/EC_WARM_RATE=0.05 must be above EC_COLD_RATE=0.1/);
  });
});

describe('tier policy', () => {
  it('encodes only after the blob stayed cold for the whole cold time, never a raised one', () => {
    let d = decideTier(base, T);
    expect(d).toEqual({ action: 'stay', coolSinceMs: base.nowMs });
    d = decideTier({ ...base, coolSinceMs: d.coolSinceMs, nowMs: base.nowMs + 59_999 }, T);
    expect(d.action).toBe('stay');
    d = decideTier({ ...base, coolSinceMs: d.coolSinceMs, nowMs: base.nowMs + 60_000 }, T);
    expect(d.action).toBe('encode');
    expect(decideTier({ ...base, raised: true, coolSinceMs: 0 }, T)).toEqual({
      action: 'stay',
      coolSinceMs: undefined,
    });
    // Written recently: not yet, whatever the clock says.
    expect(decideTier({ ...base, coolSinceMs: 0, writtenAtMs: base.nowMs - 1000 }, T).action).toBe('stay');
    // A read above the cold line resets the clock.
    expect(decideTier({ ...base, ratePerMin: 0.2, coolSinceMs: 0 }, T)).toEqual({
      action: 'stay',
      coolSinceMs: undefined,
    });
  });

  it('re-materialises a cold blob at the warm line and never flaps between the lines', () => {
    expect(decideTier({ ...base, tier: 'erasure-coded', ratePerMin: 6 }, T).action).toBe('rematerialise');
    fc.assert(
      fc.property(
        fc.double({ min: T.coldRatePerMin, max: T.warmRatePerMin, maxExcluded: true, noNaN: true }),
        (rate) => {
          // Between the lines neither tier moves, whatever the clock.
          expect(decideTier({ ...base, ratePerMin: rate, coolSinceMs: 0 }, T).action).toBe('stay');
          expect(decideTier({ ...base, tier: 'erasure-coded', ratePerMin: rate }, T).action).toBe('stay');
        },
      ),
    );
  });
});
