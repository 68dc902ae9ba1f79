import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  parseSignedParams,
  signBlobUrl,
  signedUrlPath,
  verifyBlobUrl,
} from '../../../internal/auth/signed-url.js';

const key = randomBytes(32);
const other = randomBytes(32);
const id = fc.stringMatching(/^[A-Za-z0-9._~-]{1,40}$/);
const cookie = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const exp = fc.integer({ min: 1, max: 2 ** 40 });

describe('signed URLs', () => {
  it('verify exactly the (id, cookie, exp) signed, under any active key', () => {
    fc.assert(
      fc.property(id, cookie, exp, id, cookie, exp, (i, c, e, i2, c2, e2) => {
        const sig = Buffer.from(signBlobUrl(key, i, c, e), 'base64url');
        expect(verifyBlobUrl([key], i, c, e, sig)).toBe(true);
        expect(verifyBlobUrl([other, key], i, c, e, sig)).toBe(true);
        expect(verifyBlobUrl([other], i, c, e, sig)).toBe(false);
        const same = i === i2 && c === c2 && e === e2;
        expect(verifyBlobUrl([key], i2, c2, e2, sig)).toBe(same);
      }),
    );
  });

  it('parses exp and sig: both or neither, expiry against the clock', () => {
    const now = 1_000_000_000_000;
    const path = signedUrlPath(key, 'a', 7n, now / 1000 + 60);
    const q = new URLSearchParams(path.split('?')[1]);
    expect(parseSignedParams(q, now).kind).toBe('signed');
    expect(parseSignedParams(q, now + 61_000).kind).toBe('expired');
    expect(parseSignedParams(new URLSearchParams(''), now).kind).toBe('none');
    expect(parseSignedParams(new URLSearchParams('exp=1'), now).kind).toBe('malformed');
    expect(parseSignedParams(new URLSearchParams('exp=x&sig=y'), now).kind).toBe('malformed');
  });
});
