import { describe, expect, it } from 'vitest';
import { capabilityPath, cookieSegment, parseCookieSegment } from '../../../internal/auth/capability-url.js';

describe('capability URLs /blobs/{id}/{cookie}', () => {
  it('writes the cookie as 16 lower-case hex digits and reads back only that form', () => {
    expect(cookieSegment(0x1an)).toBe('000000000000001a');
    expect(cookieSegment(2n ** 64n - 1n)).toBe('ffffffffffffffff');
    expect(capabilityPath('a.b~c', 0xdeadbeefn)).toBe('/blobs/a.b~c/00000000deadbeef');
    expect(parseCookieSegment('00000000deadbeef')).toBe(0xdeadbeefn);
    expect(parseCookieSegment('ffffffffffffffff')).toBe(2n ** 64n - 1n);
    for (const bad of [
      '',
      'deadbeef',
      '00000000DEADBEEF',
      '0000000000000000',
      '00000000deadbeef0',
      '-000000000000001',
      '0x000000deadbeef',
    ]) {
      expect(parseCookieSegment(bad), bad).toBeUndefined();
    }
  });
});
