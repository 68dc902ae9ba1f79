import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { validateBlobId } from '../../../internal/common/blob-id.js';
import { CRC32C_IMPLEMENTATION, Crc32c, crc32c, crc32cJs } from '../../../internal/store/crc32c.js';
import { ChecksumError } from '../../../internal/store/errors.js';
import {
  decodeIndexHeader,
  decodeIndexRecord,
  encodeIndexHeader,
  encodeIndexRecords,
  type IndexRecord,
} from '../../../internal/store/index-file.js';
import {
  decodeHeader,
  encodeHeader,
  encodeNeedle,
  FLAG_DELETED,
  FLAG_V2,
  lengthOf,
  MAX_HEADER_LENGTH,
  NEEDLE_FOOTER_SIZE_V2,
  NEEDLE_HEADER_SIZE,
  needleLength,
  parseNeedle,
} from '../../../internal/store/needle.js';
import { decodeSuperblock, encodeSuperblock, SUPERBLOCK_SIZE } from '../../../internal/store/superblock.js';
import { encodeV1Needle } from './v1-needle.js';

const te = new TextEncoder();
const keyArb = fc.stringMatching(/^[A-Za-z0-9._~-]{1,40}$/);

describe('crc32c', () => {
  it('matches the standard check value and known vectors', () => {
    expect(crc32c(te.encode('123456789'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });
  it('is incremental over arbitrary chunkings', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(300), (data, cut) => {
        const c = Math.min(cut, data.length);
        const whole = crc32c(data);
        expect(crc32c(data.subarray(c), crc32c(data.subarray(0, c)))).toBe(whole);
        expect(new Crc32c().update(data.subarray(0, c)).update(data.subarray(c)).digest()).toBe(whole);
      }),
    );
  });
  it('agrees with a bitwise reference', () => {
    const ref = (d: Uint8Array) => {
      let c = ~0;
      for (const b of d) {
        c ^= b;
        for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
      }
      return ~c >>> 0;
    };
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (d) => {
        expect(crc32c(d)).toBe(ref(d));
        expect(crc32cJs(d)).toBe(ref(d));
      }),
    );
  });
  it('uses the native implementation on this platform, and it agrees with the JS one on ranges', () => {
    // linux-x64 has a prebuilt binary; the JS fallback is for other platforms.
    expect(CRC32C_IMPLEMENTATION).toBe('native');
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 5000 }), fc.nat(), fc.nat(), fc.nat(), (d, a, b, seed) => {
        const start = Math.min(a, d.length);
        const end = start + Math.min(b, d.length - start);
        expect(crc32c(d, seed >>> 0, start, end)).toBe(crc32cJs(d, seed >>> 0, start, end));
      }),
    );
  });
});

describe('blob id', () => {
  it('accepts the allowed alphabet and rejects the rest', () => {
    expect(validateBlobId('abc-DEF_0.9~')).toBeNull();
    expect(validateBlobId('a'.repeat(255))).toBeNull();
    expect(validateBlobId('')).toMatch(/empty/);
    expect(validateBlobId('a'.repeat(256))).toMatch(/256/);
    expect(validateBlobId('a/b')).toMatch(/"\/"/);
    expect(validateBlobId('é')).not.toBeNull();
    expect(validateBlobId(42)).not.toBeNull();
  });
});

describe('needle format', () => {
  it('round-trips header, key and data', () => {
    fc.assert(
      fc.property(
        keyArb,
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.uint8Array({ maxLength: 200 }),
        fc.nat(2 ** 45),
        (key, cookie, data, ts) => {
          const buf = encodeNeedle({ key, cookie, flags: 0, writtenAtMs: ts }, data);
          expect(buf.length).toBe(needleLength(key.length, data.length));
          expect(buf.length % 8).toBe(0);
          const p = parseNeedle(buf);
          expect(p.header).toEqual({
            key,
            cookie,
            flags: 0,
            writtenAtMs: ts,
            dataSize: data.length,
            contentType: '',
            fileName: '',
            metaLen: 0,
          });
          expect(p.sha256).toBeUndefined();
          expect(Array.from(p.data)).toEqual(Array.from(data));
          expect(p.crc32c).toBe(crc32c(data));
        },
      ),
    );
  });

  it('encodes tombstones as DELETED with size 0 and rejects a DELETED needle with data', () => {
    const t = encodeNeedle({ key: 'k', cookie: 1n, flags: FLAG_DELETED, writtenAtMs: 5 }, new Uint8Array(0));
    expect(parseNeedle(t).header.flags).toBe(FLAG_DELETED);
    const h = encodeHeader({ key: 'k', cookie: 1n, flags: FLAG_DELETED, writtenAtMs: 5, dataSize: 3 });
    expect(() => decodeHeader(h)).toThrow(ChecksumError);
  });

  const sample = () =>
    encodeNeedle(
      { key: 'photo-123', cookie: 0xdeadbeefn, flags: 0, writtenAtMs: 1700000000000 },
      te.encode('hello, haystack!!'),
    );
  const region = (name: string, from: number, to: number, kinds: string[]) =>
    it(`detects a flipped byte in the ${name} (every byte)`, () => {
      const good = sample();
      for (let i = from; i < to; i++) {
        const bad = good.slice();
        bad[i]! ^= 0x10;
        let err: unknown;
        try {
          parseNeedle(bad);
        } catch (e) {
          err = e;
        }
        expect(err, `byte ${i}`).toBeInstanceOf(ChecksumError);
        expect(kinds, `byte ${i}`).toContain((err as ChecksumError).kind);
      }
    });
  region('header', 0, NEEDLE_HEADER_SIZE, ['header-magic', 'header-checksum', 'truncated']);
  region('key', NEEDLE_HEADER_SIZE, NEEDLE_HEADER_SIZE + 9, ['header-checksum']);
  region('data', NEEDLE_HEADER_SIZE + 9, NEEDLE_HEADER_SIZE + 9 + 17, ['data-checksum']);
  region('footer', NEEDLE_HEADER_SIZE + 9 + 17, NEEDLE_HEADER_SIZE + 9 + 17 + 8, [
    'footer-magic',
    'data-checksum',
  ]);

  it('never throws anything but ChecksumError on garbage and never hangs', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (junk) => {
        try {
          parseNeedle(junk);
        } catch (e) {
          expect(e).toBeInstanceOf(ChecksumError);
        }
      }),
      { numRuns: 2000 },
    );
    const good = sample();
    for (let cut = 0; cut < good.length; cut++)
      expect(() => parseNeedle(good.subarray(0, cut))).toThrow(ChecksumError);
  });
});

describe('needle format v2', () => {
  const metaArb = fc.string({ unit: 'grapheme', maxLength: 60 }).filter((x) => te.encode(x).length <= 255);
  const sha = (d: Uint8Array) => new Uint8Array(createHash('sha256').update(d).digest());

  it('round-trips content type, file name (UTF-8) and the SHA-256 in the footer', () => {
    fc.assert(
      fc.property(
        keyArb,
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.uint8Array({ maxLength: 200 }),
        fc.nat(2 ** 45),
        metaArb,
        metaArb,
        (key, cookie, data, ts, contentType, fileName) => {
          const digest = sha(data);
          const buf = encodeNeedle(
            { key, cookie, flags: FLAG_V2, writtenAtMs: ts, contentType, fileName },
            data,
            digest,
          );
          const metaLen = te.encode(contentType).length + te.encode(fileName).length;
          expect(buf.length).toBe(needleLength(key.length, data.length, FLAG_V2, metaLen));
          expect(buf.length % 8).toBe(0);
          const p = parseNeedle(buf);
          expect(p.header).toEqual({
            key,
            cookie,
            flags: FLAG_V2,
            writtenAtMs: ts,
            dataSize: data.length,
            contentType,
            fileName,
            metaLen,
          });
          expect(p.length).toBe(lengthOf(p.header));
          expect(Array.from(p.data)).toEqual(Array.from(data));
          expect(Array.from(p.sha256 ?? [])).toEqual(Array.from(digest));
          expect(p.crc32c).toBe(crc32c(data));
        },
      ),
    );
  });

  it('still parses v1 needles written by the old encoder, byte for byte as before', () => {
    fc.assert(
      fc.property(
        keyArb,
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.uint8Array({ maxLength: 200 }),
        fc.nat(2 ** 45),
        (key, cookie, data, ts) => {
          const old = encodeV1Needle({ key, cookie, deleted: false, writtenAtMs: ts }, data);
          // The new encoder, asked for a v1 needle, writes exactly the old bytes.
          expect(
            Buffer.from(encodeNeedle({ key, cookie, flags: 0, writtenAtMs: ts }, data)).equals(
              Buffer.from(old),
            ),
          ).toBe(true);
          const p = parseNeedle(old);
          expect(p.header.flags).toBe(0);
          expect(p.header.contentType).toBe('');
          expect(p.sha256).toBeUndefined();
          expect(Array.from(p.data)).toEqual(Array.from(data));
        },
      ),
    );
  });

  it('refuses meta without FLAG_V2, a v2 tombstone, and meta over 255 bytes', () => {
    expect(() =>
      encodeHeader({ key: 'k', cookie: 1n, flags: 0, writtenAtMs: 1, dataSize: 0, contentType: 'a/b' }),
    ).toThrow(RangeError);
    expect(() =>
      encodeHeader({
        key: 'k',
        cookie: 1n,
        flags: FLAG_V2,
        writtenAtMs: 1,
        dataSize: 0,
        fileName: 'é'.repeat(128),
      }),
    ).toThrow(RangeError);
    const tomb = encodeHeader({
      key: 'k',
      cookie: 1n,
      flags: FLAG_V2 | FLAG_DELETED,
      writtenAtMs: 1,
      dataSize: 0,
    });
    expect(() => decodeHeader(tomb)).toThrow(ChecksumError);
    // A v1 header with a non-zero byte where v2 keeps meta lengths is invalid, even with a valid CRC.
    const v1 = encodeHeader({ key: 'k', cookie: 1n, flags: 0, writtenAtMs: 1, dataSize: 0 });
    v1[32] = 1;
    const withKey = new Uint8Array(MAX_HEADER_LENGTH);
    withKey.set(v1);
    const crc = crc32c(withKey, crc32c(withKey, 0, 0, 36), NEEDLE_HEADER_SIZE, NEEDLE_HEADER_SIZE + 2);
    new DataView(withKey.buffer).setUint32(36, crc, true);
    expect(() => decodeHeader(withKey)).toThrow(ChecksumError);
  });

  const data = te.encode('hello, haystack!!');
  const sample = () =>
    encodeNeedle(
      {
        key: 'photo-123',
        cookie: 0xdeadbeefn,
        flags: FLAG_V2,
        writtenAtMs: 1700000000000,
        contentType: 'image/jpeg',
        fileName: 'été.jpg',
      },
      data,
      sha(data),
    );
  const metaLen = 'image/jpeg'.length + te.encode('été.jpg').length;
  const keyEnd = NEEDLE_HEADER_SIZE + 9;
  const dataAt = keyEnd + metaLen;
  const footAt = dataAt + data.length;
  const region = (name: string, from: number, to: number, kinds: string[]) =>
    it(`detects a flipped byte in the v2 ${name} (every byte)`, () => {
      const good = sample();
      expect(parseNeedle(good).header.fileName).toBe('été.jpg');
      for (let i = from; i < to; i++) {
        const bad = good.slice();
        bad[i]! ^= 0x10;
        let err: unknown;
        try {
          parseNeedle(bad);
        } catch (e) {
          err = e;
        }
        expect(err, `byte ${i}`).toBeInstanceOf(ChecksumError);
        expect(kinds, `byte ${i}`).toContain((err as ChecksumError).kind);
      }
    });
  region('header', 0, NEEDLE_HEADER_SIZE, ['header-magic', 'header-checksum', 'truncated', 'header-field']);
  region('key and meta', NEEDLE_HEADER_SIZE, dataAt, ['header-checksum']);
  region('data', dataAt, footAt, ['data-checksum']);
  region('footer (magic, CRC, SHA-256, footer CRC)', footAt, footAt + NEEDLE_FOOTER_SIZE_V2, [
    'footer-magic',
    'footer-checksum',
  ]);

  it('never throws anything but ChecksumError on a cut v2 needle', () => {
    const good = sample();
    for (let cut = 0; cut < good.length; cut++)
      expect(() => parseNeedle(good.subarray(0, cut))).toThrow(ChecksumError);
  });
});

describe('superblock', () => {
  it('round-trips and detects every flipped byte', () => {
    const sb = { volumeId: 7, generation: 3, createdAtMs: 1700000000123 };
    const buf = encodeSuperblock(sb);
    expect(buf.length).toBe(SUPERBLOCK_SIZE);
    expect(decodeSuperblock(buf)).toEqual(sb);
    for (let i = 0; i < SUPERBLOCK_SIZE; i++) {
      const bad = buf.slice();
      bad[i]! ^= 1;
      expect(() => decodeSuperblock(bad), `byte ${i}`).toThrow(ChecksumError);
    }
  });
});

describe('index records', () => {
  it('round-trip and reject torn or flipped records', () => {
    const recs: IndexRecord[] = [
      { key: 'a', flags: 0, offset: 64, dataSize: 10, cookie: 5n, writtenAtMs: 9, metaLen: 0 },
      { key: 'v2', flags: FLAG_V2, offset: 128, dataSize: 10, cookie: 6n, writtenAtMs: 10, metaLen: 510 },
      {
        key: 'bb-longer.key',
        flags: 1,
        offset: 2 ** 34,
        dataSize: 0,
        cookie: 2n ** 64n - 1n,
        writtenAtMs: 2 ** 44,
        metaLen: 0,
      },
    ];
    const buf = encodeIndexRecords(recs);
    const r1 = decodeIndexRecord(buf, 0)!;
    expect(r1.record).toEqual(recs[0]);
    const rv2 = decodeIndexRecord(buf, r1.next)!;
    expect(rv2.record).toEqual(recs[1]);
    const r2 = decodeIndexRecord(buf, rv2.next)!;
    expect(r2.record).toEqual(recs[2]);
    expect(r2.next).toBe(buf.length);
    for (let cut = rv2.next; cut < buf.length; cut++)
      expect(decodeIndexRecord(buf.subarray(0, cut), rv2.next)).toBeNull();
    for (let i = 0; i < r1.next; i++) {
      const bad = buf.slice();
      bad[i]! ^= 4;
      expect(decodeIndexRecord(bad, 0), `byte ${i}`).toBeNull();
    }
    const h = { volumeId: 3, generation: 9, createdAtMs: 77 };
    expect(decodeIndexHeader(encodeIndexHeader(h))).toEqual(h);
  });

  it('read v1 records (zero where metaLen now is) and refuse metaLen without FLAG_V2 or over 510', () => {
    // A v1 record as the old encoder wrote it: the u16 at 6 was reserved, always 0.
    const old = encodeIndexRecords([
      { key: 'old', flags: 0, offset: 64, dataSize: 3, cookie: 1n, writtenAtMs: 5 },
    ]);
    expect(decodeIndexRecord(old, 0)?.record.metaLen).toBe(0);
    const bad = (r: IndexRecord) => decodeIndexRecord(encodeIndexRecords([r]), 0);
    const base = { key: 'k', offset: 64, dataSize: 3, cookie: 1n, writtenAtMs: 5 };
    expect(bad({ ...base, flags: 0, metaLen: 1 })).toBeNull();
    expect(bad({ ...base, flags: FLAG_V2, metaLen: 511 })).toBeNull();
    expect(bad({ ...base, flags: FLAG_V2, metaLen: 510 })).not.toBeNull();
  });
});
