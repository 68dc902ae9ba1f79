import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { validateBlobId } from '../../../internal/common/blob-id.js';
import { shardKey, validateShardIndex, validateStripeId } from '../../../internal/common/shard-key.js';

const idChar = fc.constantFrom(...'abcXYZ019._~-'.split(''));
const stripeId = fc.string({ unit: idChar, minLength: 1, maxLength: 255 });

describe('shard keys', () => {
  it('are valid needle keys (blob-id alphabet, ≤ 255 bytes) for every stripe id and index', () => {
    fc.assert(
      fc.property(stripeId, fc.integer({ min: 0, max: 29 }), (s, i) => {
        expect(validateBlobId(shardKey(s, i))).toBeNull();
      }),
      { numRuns: 500 },
    );
  });

  it('differ for different (stripe, index) pairs, long ids included', () => {
    fc.assert(
      fc.property(
        stripeId,
        stripeId,
        fc.integer({ min: 0, max: 29 }),
        fc.integer({ min: 0, max: 29 }),
        (a, b, i, j) => {
          fc.pre(a !== b || i !== j);
          expect(shardKey(a, i)).not.toBe(shardKey(b, j));
        },
      ),
      { numRuns: 500 },
    );
    const long = 'x'.repeat(240);
    expect(shardKey(long, 0)).not.toBe(shardKey(`${long}y`, 0)); // same 150-byte prefix
    expect(shardKey(long, 0).length).toBeLessThanOrEqual(255);
    expect(shardKey('photo-1', 3)).toBe('3~photo-1');
  });

  it('bounds stripe ids and indices from the wire', () => {
    expect(validateStripeId('')).toMatch(/stripe id must not be empty/);
    expect(validateStripeId('a/b')).toMatch(/stripe id contains "\/"/);
    expect(validateStripeId('g7.12')).toBeNull();
    expect(validateShardIndex(30)).toMatch(/outside 0..29/);
    expect(validateShardIndex(-1)).not.toBeNull();
    expect(validateShardIndex(29)).toBeNull();
  });
});
