import { describe, expect, it } from 'vitest';
import { fillDropReason } from '../../../internal/cache/blob-cache.js';

/** BlobCache.set's local fill rule (issue 14): the read-age limit and the epoch fence. */
describe('fillDropReason', () => {
  const T = 2_000; // tombstone ms

  it('never drops a fresh write, with or without a known epoch', () => {
    expect(fillDropReason({ fresh: true }, T)).toBeUndefined();
    expect(fillDropReason({ fresh: true }, T, { nowMs: 10, epochLearnedAtMs: undefined })).toBeUndefined();
    expect(fillDropReason({ fresh: true }, T, { nowMs: 10, epochLearnedAtMs: 50 })).toBeUndefined();
  });

  it('drops a fill whose read began half the tombstone time ago or more, or with a nonsense age', () => {
    expect(fillDropReason({ readAgeMs: 999 }, T)).toBeUndefined();
    expect(fillDropReason({ readAgeMs: 1000 }, T)).toBe('too_old');
    expect(fillDropReason({ readAgeMs: -1 }, T)).toBe('too_old');
    expect(fillDropReason({ readAgeMs: Number.NaN }, T)).toBe('too_old');
  });

  it('drops a fill while no epoch is known (Redis state may have been lost)', () => {
    expect(fillDropReason({ readAgeMs: 0 }, T, { nowMs: 5_000, epochLearnedAtMs: undefined })).toBe(
      'before_epoch',
    );
  });

  it('drops a fill whose read began before (or when) the epoch was learned, keeps one begun after', () => {
    const fence = { nowMs: 10_000, epochLearnedAtMs: 9_500 };
    expect(fillDropReason({ readAgeMs: 600 }, T, fence)).toBe('before_epoch'); // began at 9400
    expect(fillDropReason({ readAgeMs: 500 }, T, fence)).toBe('before_epoch'); // began at 9500
    expect(fillDropReason({ readAgeMs: 499 }, T, fence)).toBeUndefined(); // began at 9501
    expect(fillDropReason({ readAgeMs: 0 }, T, fence)).toBeUndefined();
  });

  it('reports the read-age limit first (it holds without any fence)', () => {
    expect(fillDropReason({ readAgeMs: 1500 }, T, { nowMs: 10_000, epochLearnedAtMs: 9_000 })).toBe(
      'too_old',
    );
  });
});
