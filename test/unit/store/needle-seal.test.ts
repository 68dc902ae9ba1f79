import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { newKekLine, parseKeks } from '../../../internal/store/crypto/kek.js';
import {
  freshNonce,
  NeedleOpener,
  NeedleSealer,
  needleAad,
} from '../../../internal/store/crypto/needle-seal.js';
import { newVolumeKeys, unwrapDek, wrapDek } from '../../../internal/store/crypto/volume-keys.js';
import { ChecksumError } from '../../../internal/store/errors.js';
import {
  decodeFooterFull,
  decodeHeader,
  encodeFooter,
  encodeHeader,
  FLAG_DELETED,
  FLAG_ENCRYPTED,
  FLAG_V2,
  NEEDLE_FOOTER_SIZE_SEALED,
  type NeedleHeader,
  needleLength,
} from '../../../internal/store/needle.js';

const key = () => randomBytes(32);
const idArb = fc.stringMatching(/^[A-Za-z0-9._~-]{1,40}$/);
const headerArb = fc.record({
  key: idArb,
  cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  writtenAtMs: fc.integer({ min: 0, max: 2 ** 47 }),
  contentType: fc.string({ maxLength: 20 }),
  fileName: fc.string({ maxLength: 20 }),
  keySlot: fc.integer({ min: 1, max: 0xffff }),
});

function seal(dek: Buffer, h: NeedleHeader, data: Uint8Array, cuts: number[]) {
  const aad = encodeHeader(h);
  const s = new NeedleSealer(dek, aad);
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const c of [...cuts.filter((x) => x < data.length).sort((a, b) => a - b), data.length]) {
    parts.push(s.update(data.subarray(at, Math.max(at, c))));
    at = Math.max(at, c);
  }
  return { ct: Buffer.concat(parts), nonce: s.nonce, tag: s.final(), aad };
}

function open(
  dek: Buffer,
  aad: Uint8Array,
  nonce: Uint8Array,
  tag: Uint8Array,
  ct: Uint8Array,
  step: number,
) {
  const o = new NeedleOpener(dek, aad, nonce, tag);
  const out: Uint8Array[] = [];
  for (let i = 0; i < ct.length; i += step) out.push(o.update(ct.subarray(i, i + step)));
  return { plain: Buffer.concat(out), ok: o.final() };
}

describe('needle sealing (AES-256-GCM, streaming)', () => {
  it('round-trips any data under any chunking; ciphertext has the plaintext length', () => {
    fc.assert(
      fc.property(
        headerArb,
        fc.uint8Array({ maxLength: 5000 }),
        fc.array(fc.nat({ max: 5000 }), { maxLength: 6 }),
        fc.integer({ min: 1, max: 3000 }),
        (hf, data, cuts, step) => {
          const dek = key();
          const h: NeedleHeader = { ...hf, flags: FLAG_V2 | FLAG_ENCRYPTED, dataSize: data.length };
          const { ct, nonce, tag, aad } = seal(dek, h, data, cuts);
          expect(ct.length).toBe(data.length);
          const { plain, ok } = open(dek, aad, nonce, tag, ct, step);
          expect(ok).toBe(true);
          expect(Buffer.from(plain).equals(Buffer.from(data))).toBe(true);
        },
      ),
      { numRuns: 150 },
    );
  });

  it('update hands out a fresh buffer per call that later calls and input reuse leave unchanged (store-write keeps them until commit)', () => {
    const dek = key();
    const aad = randomBytes(40);
    const s = new NeedleSealer(dek, aad);
    const input = Buffer.alloc(4096, 7);
    const a = s.update(input);
    const aCopy = Buffer.from(a);
    input.fill(9); // the caller reuses its chunk buffer
    const b = s.update(input);
    const tag = s.final();
    expect(Buffer.from(a).equals(aCopy)).toBe(true);
    expect(a.buffer).not.toBe(b.buffer);
    // The kept pieces open to what was sealed.
    const o = new NeedleOpener(dek, aad, s.nonce, tag);
    const plain = Buffer.concat([o.update(a), o.update(b)]);
    expect(o.final()).toBe(true);
    expect(plain.equals(Buffer.concat([Buffer.alloc(4096, 7), Buffer.alloc(4096, 9)]))).toBe(true);
  });

  it('detects any flipped bit of ciphertext, nonce, tag or authenticated header, and a wrong key', () => {
    fc.assert(
      fc.property(
        headerArb,
        fc.uint8Array({ minLength: 1, maxLength: 3000 }),
        fc.nat(),
        fc.integer({ min: 0, max: 7 }),
        fc.constantFrom('ct', 'nonce', 'tag', 'aad', 'key'),
        (hf, data, where, bit, part) => {
          const dek = key();
          const h: NeedleHeader = { ...hf, flags: FLAG_V2 | FLAG_ENCRYPTED, dataSize: data.length };
          const s = seal(dek, h, data, []);
          const flip = (b: Uint8Array) => {
            const c = Buffer.from(b);
            c[where % c.length]! ^= 1 << bit;
            return c;
          };
          const args = { dek, aad: s.aad, nonce: s.nonce, tag: s.tag, ct: s.ct };
          if (part === 'ct') args.ct = flip(s.ct);
          else if (part === 'nonce') args.nonce = flip(s.nonce);
          else if (part === 'tag') args.tag = flip(s.tag);
          else if (part === 'aad') args.aad = flip(s.aad);
          else args.dek = key();
          expect(open(args.dek, args.aad, args.nonce, args.tag, args.ct, 1024).ok).toBe(false);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('nonces: distinct across batches, 12 bytes, and a nonce handed out never changes when the next batch is drawn', () => {
    const first = freshNonce();
    const copy = Buffer.from(first);
    const seen = new Set<string>();
    for (let i = 0; i < 2000; i++) {
      const n = freshNonce();
      expect(n.length).toBe(12);
      seen.add(Buffer.from(n).toString('hex'));
    }
    expect(seen.size).toBe(2000);
    expect(Buffer.from(first).equals(copy)).toBe(true); // several batches later
    // A sealer's nonce is the one its footer carries: it still opens after later seals.
    const dek = key();
    const aad = randomBytes(40);
    const s = new NeedleSealer(dek, aad);
    const ct = s.update(Buffer.from('payload'));
    for (let i = 0; i < 600; i++) new NeedleSealer(dek, aad);
    const tag = s.final();
    const o = new NeedleOpener(dek, aad, s.nonce, tag);
    expect(Buffer.from(o.update(ct)).toString()).toBe('payload');
    expect(o.final()).toBe(true);
  });

  it('binds the needle header: the same ciphertext under another id, cookie, slot or flags fails', () => {
    const dek = key();
    const h: NeedleHeader = {
      key: 'photo-1',
      cookie: 7n,
      flags: FLAG_V2 | FLAG_ENCRYPTED,
      dataSize: 4,
      writtenAtMs: 1000,
      keySlot: 1,
    };
    const s = seal(dek, h, Buffer.from('data'), []);
    for (const other of [{ key: 'photo-2' }, { cookie: 8n }, { keySlot: 2 }, { writtenAtMs: 1001 }]) {
      const aad = needleAad({ ...h, ...other });
      expect(open(dek, aad, s.nonce, s.tag, s.ct, 4).ok).toBe(false);
    }
    expect(open(dek, needleAad(h), s.nonce, s.tag, s.ct, 4).ok).toBe(true);
  });
});

describe('encrypted needle framing', () => {
  it('encodes the key slot in the header and nonce, tag, content CRC in a 76-byte footer', () => {
    fc.assert(
      fc.property(headerArb, fc.nat({ max: 1 << 20 }), fc.nat({ max: 2 ** 32 - 1 }), (hf, size, crc) => {
        const h: NeedleHeader = { ...hf, flags: FLAG_V2 | FLAG_ENCRYPTED, dataSize: size };
        const bytes = encodeHeader(h);
        const back = decodeHeader(bytes);
        expect(back.keySlot).toBe(hf.keySlot);
        expect(back.flags).toBe(FLAG_V2 | FLAG_ENCRYPTED);
        const metaLen = back.metaLen ?? 0;
        const nonce = randomBytes(12);
        const tag = randomBytes(16);
        const sha = randomBytes(32);
        const foot = encodeFooter(crc ^ 1, h.key.length, size, {
          sha256: sha,
          metaLen,
          sealed: { contentCrc: crc, nonce, tag },
        });
        expect(bytes.length + size + foot.length).toBe(
          needleLength(h.key.length, size, FLAG_V2 | FLAG_ENCRYPTED, metaLen),
        );
        const f = decodeFooterFull(foot, 0, undefined, FLAG_V2 | FLAG_ENCRYPTED);
        expect(f.crc32c).toBe(crc);
        expect(f.storedCrc).toBe((crc ^ 1) >>> 0);
        expect(Buffer.from(f.nonce!).equals(nonce)).toBe(true);
        expect(Buffer.from(f.tag!).equals(tag)).toBe(true);
        expect(Buffer.from(f.sha256!).equals(sha)).toBe(true);
        // Any flipped footer bit is a footer error.
        for (let i = 0; i < NEEDLE_FOOTER_SIZE_SEALED; i += 5) {
          const bad = Buffer.from(foot);
          bad[i]! ^= 0x10;
          expect(() => decodeFooterFull(bad, 0, undefined, FLAG_V2 | FLAG_ENCRYPTED)).toThrow(ChecksumError);
        }
      }),
      { numRuns: 100 },
    );
  });

  it('refuses a key slot without FLAG_ENCRYPTED, FLAG_ENCRYPTED without a slot, v1 or a tombstone', () => {
    const base = { key: 'k', cookie: 1n, dataSize: 0, writtenAtMs: 1 };
    expect(() => encodeHeader({ ...base, flags: FLAG_V2, keySlot: 3 })).toThrow(RangeError);
    expect(() => encodeHeader({ ...base, flags: FLAG_V2 | FLAG_ENCRYPTED })).toThrow(RangeError);
    expect(() => encodeHeader({ ...base, flags: FLAG_ENCRYPTED, keySlot: 1 })).toThrow(RangeError);
    expect(() =>
      encodeHeader({ ...base, flags: FLAG_V2 | FLAG_ENCRYPTED | FLAG_DELETED, keySlot: 1 }),
    ).toThrow(RangeError);
    // A decoder sees a slot on a plaintext header (bytes 6..7 were reserved) as damage.
    const h = encodeHeader({ ...base, flags: FLAG_V2 | FLAG_ENCRYPTED, keySlot: 1 });
    const plain = Buffer.from(h);
    plain[4] = FLAG_V2;
    expect(() => decodeHeader(plain)).toThrow(ChecksumError);
  });
});

describe('key-encryption keys and DEK wrapping', () => {
  it('parses KEK files: the last key is the newest; bad lines are named without echoing keys', () => {
    const a = newKekLine('k1');
    const b = newKekLine('k2');
    const ring = parseKeks(`# keys\n${a}\n\n${b}\n`);
    expect(ring.newest.id).toBe('k2');
    expect(ring.get('k1')?.key.length).toBe(32);
    expect(parseKeks(`${a};${b}`).keys.map((k) => k.id)).toEqual(['k1', 'k2']);
    const secret = a.split(' ')[1]!;
    for (const [text, msg] of [
      ['', 'no key'],
      ['k1', 'expected'],
      [`bad/id ${secret}`, 'key id'],
      [`k1 ${secret.slice(0, 20)}`, 'exactly 32 bytes'],
      [`${a}\n${a}`, 'twice'],
    ] as const) {
      expect(() => parseKeks(text)).toThrow(msg);
      try {
        parseKeks(text);
      } catch (err) {
        expect((err as Error).message).not.toContain(secret);
      }
    }
  });

  it('wraps a DEK for one volume and slot only, and only the wrapping KEK unwraps it', () => {
    const kek = key();
    const keys = newVolumeKeys(3);
    const dek = keys.dek(1)!;
    const w = wrapDek(kek, dek, 3, 1);
    expect(w.length).toBe(60);
    expect(unwrapDek(kek, w, 3, 1)?.equals(dek)).toBe(true);
    expect(unwrapDek(kek, w, 4, 1)).toBeUndefined();
    expect(unwrapDek(kek, w, 3, 2)).toBeUndefined();
    expect(unwrapDek(key(), w, 3, 1)).toBeUndefined();
  });
});
