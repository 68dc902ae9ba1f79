import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  checkEcParams,
  checkLayout,
  dataShardsFor,
  decodeBlob,
  encodeBlob,
  rebuildShard,
  shardSizeFor,
  verifyShard,
} from '../../../internal/ec/codec.js';
import { EcParamsError, TooFewShardsError } from '../../../internal/ec/errors.js';

const code = fc.record({ k: fc.integer({ min: 1, max: 12 }), m: fc.integer({ min: 1, max: 6 }) });
const blob = fc.uint8Array({ minLength: 0, maxLength: 3000 });

/** Indices of `n` shards to keep: a random subset of exactly `keep` of them. */
const subset = (n: number, keep: number) =>
  fc.shuffledSubarray(
    Array.from({ length: n }, (_, i) => i),
    { minLength: keep, maxLength: keep },
  );

describe('ec codec', async () => {
  it('any k of the k+m shards reconstruct the blob byte-identical', async () => {
    await fc.assert(
      fc.asyncProperty(
        code.chain((p) => fc.tuple(fc.constant(p), blob, subset(p.k + p.m, p.k))),
        async ([p, data, keep]) => {
          const enc = await encodeBlob(data, p);
          const given = enc.shards.map((s, i) => (keep.includes(i) ? s : undefined));
          const out = await decodeBlob(enc.layout, given);
          expect(Buffer.compare(out.data, Buffer.from(data))).toBe(0);
          expect(out.corrupt).toEqual([]);
          // Only when a data shard is missing is any decoding done.
          expect(out.decoded).toBe(!range(p.k).every((i) => keep.includes(i)));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('data shards are the blob bytes (systematic) and all-data reads skip decoding', async () => {
    await fc.assert(
      fc.asyncProperty(code, blob, async (p, data) => {
        const enc = await encodeBlob(data, p);
        const joined = Buffer.concat(enc.shards.slice(0, p.k));
        expect(Buffer.compare(joined.subarray(0, data.length), Buffer.from(data))).toBe(0);
        expect(joined.subarray(data.length).every((b) => b === 0)).toBe(true);
        const out = await decodeBlob(
          enc.layout,
          enc.shards.map((s, i) => (i < p.k ? s : undefined)),
        );
        expect(out.decoded).toBe(false);
        expect(Buffer.compare(out.data, Buffer.from(data))).toBe(0);
      }),
      { numRuns: 200 },
    );
  });

  it('a flipped byte in any shard is detected and never decoded into the blob', async () => {
    await fc.assert(
      fc.asyncProperty(
        code.chain((p) =>
          fc.tuple(
            fc.constant(p),
            fc.uint8Array({ minLength: 1, maxLength: 3000 }),
            fc.integer({ min: 0, max: p.k + p.m - 1 }),
            fc.nat(),
            fc.integer({ min: 1, max: 255 }),
          ),
        ),
        async ([p, data, victim, at, mask]) => {
          const enc = await encodeBlob(data, p);
          const shards = enc.shards.map((s) => Buffer.from(s));
          const bad = shards[victim] as Buffer;
          const i = at % bad.length;
          bad[i] = (bad[i] as number) ^ mask;
          expect(verifyShard(enc.layout, victim, bad)).toBe(false);
          const out = await decodeBlob(enc.layout, shards);
          expect(out.corrupt).toEqual([victim]);
          expect(Buffer.compare(out.data, Buffer.from(data))).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('fewer than k intact shards is TooFewShardsError naming the corrupt ones', async () => {
    const data = Buffer.from('the quick brown fox jumps over the lazy dog'.repeat(20));
    const enc = await encodeBlob(data, { k: 4, m: 2 });
    const shards: Array<Buffer | undefined> = enc.shards.map((s) => Buffer.from(s));
    shards[0] = undefined;
    shards[1] = undefined;
    const five = shards[5] as Buffer;
    five[3] = (five[3] as number) ^ 1;
    const err = await decodeBlob(enc.layout, shards).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TooFewShardsError);
    expect((err as TooFewShardsError).intact).toBe(3);
    expect((err as TooFewShardsError).corrupt).toEqual([5]);
    expect((err as Error).message).toContain('shards 5 failed their CRC32C');
  });

  it('a lost shard, data or parity, is rebuilt identical from any k others', async () => {
    await fc.assert(
      fc.asyncProperty(
        code.chain((p) =>
          fc.tuple(fc.constant(p), blob, fc.integer({ min: 0, max: p.k + p.m - 1 }), subset(p.k + p.m, p.k)),
        ),
        async ([p, data, lost, keep]) => {
          const enc = await encodeBlob(data, p);
          const given = enc.shards.map((s, i) => (keep.includes(i) && i !== lost ? s : undefined));
          if (given.filter(Boolean).length < p.k) {
            await expect(rebuildShard(enc.layout, given, lost)).rejects.toThrow(TooFewShardsError);
            return;
          }
          const rebuilt = await rebuildShard(enc.layout, given, lost);
          expect(Buffer.compare(rebuilt, enc.shards[lost] as Buffer)).toBe(0);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('bounds codes and layouts', async () => {
    expect(checkEcParams({ k: 0, m: 2 })).toMatch(/k=0/);
    expect(checkEcParams({ k: 4, m: 7 })).toMatch(/m=7/);
    expect(checkEcParams({ k: 10, m: 4 })).toBeUndefined();
    await expect(encodeBlob(Buffer.alloc(1), { k: 25, m: 1 })).rejects.toThrow(EcParamsError);
    const enc = await encodeBlob(Buffer.alloc(100, 7), { k: 4, m: 2 });
    expect(checkLayout(enc.layout)).toBeUndefined();
    expect(checkLayout({ ...enc.layout, shardSize: 8 })).toMatch(/shard size 8/);
    expect(checkLayout({ ...enc.layout, crc32c: [1] })).toMatch(/1 shard checksums/);
    await expect(decodeBlob({ ...enc.layout, size: -1 }, enc.shards)).rejects.toThrow(EcParamsError);
    expect(shardSizeFor(0, 4)).toBe(8);
    expect(shardSizeFor(100, 4)).toBe(32);
    expect(shardSizeFor(64 * 1024, 10)).toBe(6560);
  });

  it('maps byte ranges to the data shards that hold them', async () => {
    const enc = await encodeBlob(Buffer.alloc(100), { k: 4, m: 2 }); // 32-byte shards
    expect(dataShardsFor(enc.layout, 0, 0)).toEqual({ first: 0, last: 3, skip: 0 });
    expect(dataShardsFor(enc.layout, 40, 10)).toEqual({ first: 1, last: 1, skip: 8 });
    expect(dataShardsFor(enc.layout, 30, 40)).toEqual({ first: 0, last: 2, skip: 30 });
    expect(dataShardsFor(enc.layout, 99, 1000)).toEqual({ first: 3, last: 3, skip: 3 });
    expect(dataShardsFor(enc.layout, 100, 0).first).toBeGreaterThan(dataShardsFor(enc.layout, 100, 0).last);
  });
});

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
