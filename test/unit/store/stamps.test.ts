import fs from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AlreadyExistsError, NotFoundError } from '../../../internal/store/errors.js';
import { NEEDLE_HEADER_SIZE } from '../../../internal/store/needle.js';
import type { Store, StoreOpenOptions } from '../../../internal/store/store.js';
import { blob, get, hex, openStore, put, tempDir } from './helpers.js';

/**
 * Needles and tombstones are ordered by their per-store stamp: a replica copy
 * (Replicate) supersedes an older tombstone, a delete supersedes an older
 * needle, whatever volumes they sit in, through restarts and compaction.
 */

const SMALL: Partial<StoreOpenOptions> = { maxVolumeSize: 8192 };
const X = blob(3000, 1);

async function expectDeleted(s: Store, id: string): Promise<void> {
  await expect(s.openRead(id), id).rejects.toBeInstanceOf(NotFoundError);
  const err = await put(s, id, X).catch((e: unknown) => e);
  expect(err, id).toBeInstanceOf(AlreadyExistsError);
  expect((err as AlreadyExistsError).reason).toBe('deleted');
}

async function copyDir(from: string): Promise<string> {
  const to = await tempDir();
  await fs.cp(from, to, { recursive: true });
  return to;
}

function permutations<T>(xs: T[]): T[][] {
  if (xs.length <= 1) return [xs];
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
}

describe('stamp-ordered needles and tombstones', () => {
  it('takes a replica copy over a tombstone, but not a client write; both survive a restart', async () => {
    const dir = await tempDir();
    let s = await openStore(dir);
    await put(s, 'x', X);
    expect(await s.delete('x')).toBe(true);
    await expectDeleted(s, 'x');
    const res = await put(s, 'x', X, { replica: true });
    expect(res.existed).toBe(false);
    expect(hex(await get(s, 'x'))).toBe(hex(X));
    // A second copy of the same content is an idempotent retry.
    expect((await put(s, 'x', X, { replica: true })).existed).toBe(true);
    await s.close();
    s = await openStore(dir);
    expect(hex(await get(s, 'x'))).toBe(hex(X));
    expect((await s.stats()).needleCount).toBe(1);
    expect(await s.delete('x')).toBe(true);
    await s.close();
    s = await openStore(dir);
    await expectDeleted(s, 'x');
    expect((await s.stats()).needleCount).toBe(0);
  });

  it('keeps stamps increasing when the clock stands still or steps back across a restart', async () => {
    const dir = await tempDir();
    let now = 5_000;
    const clock = { now: () => now };
    let s = await openStore(dir, { clock });
    await put(s, 'x', X);
    expect(await s.delete('x')).toBe(true);
    await put(s, 'x', X, { replica: true }); // all three at the same clock reading
    const first = (await s.openRead('x')).writtenAtMs;
    expect(first).toBe(5_002);
    await s.close();
    now = 1_000; // the clock stepped back
    s = await openStore(dir, { clock });
    expect(hex(await get(s, 'x'))).toBe(hex(X));
    expect(await s.delete('x')).toBe(true);
    await put(s, 'x', X, { replica: true });
    expect((await s.openRead('x')).writtenAtMs).toBe(5_004);
    await s.close();
    s = await openStore(dir, { clock });
    expect(hex(await get(s, 'x'))).toBe(hex(X));
    expect(await s.delete('x')).toBe(true);
    await s.close();
    s = await openStore(dir, { clock });
    await expectDeleted(s, 'x');
  });

  it('orders records across volumes through restarts and compaction of every volume in every order', async () => {
    const dir = await tempDir();
    let s = await openStore(dir, SMALL);
    // Volume 1: x's first needle, then a filler that fills it exactly.
    expect((await put(s, 'x', X)).volumeId).toBe(1);
    await put(s, 'f1', blob(5022, 2));
    // Volume 2: the tombstone, the copy that supersedes it, a filler.
    expect(await s.delete('x')).toBe(true);
    expect((await put(s, 'x', X, { replica: true })).volumeId).toBe(2);
    await put(s, 'f2', blob(4966, 3));
    await s.close();
    const live = await copyDir(dir); // x live: its needle in 2 beats the tombstone in 2 and the needle in 1
    s = await openStore(dir, SMALL);
    expect((await s.openRead('x')).volumeId).toBe(2);
    // Volume 3: a second tombstone, newer than everything.
    expect(await s.delete('x')).toBe(true);
    await s.close();
    const deleted = dir;
    s = await openStore(deleted, SMALL);
    expect((await s.stats()).volumes).toHaveLength(3);
    await s.close();

    const fillers = async (r: Store) => {
      expect(hex(await get(r, 'f1'))).toBe(hex(blob(5022, 2)));
      expect(hex(await get(r, 'f2'))).toBe(hex(blob(4966, 3)));
    };
    for (const order of permutations([1, 2, 3])) {
      for (const [from, check] of [
        [live, async (r: Store) => expect(hex(await get(r, 'x'))).toBe(hex(X))],
        [deleted, (r: Store) => expectDeleted(r, 'x')],
      ] as const) {
        const d = await copyDir(from);
        for (const vid of order) {
          let r = await openStore(d, SMALL);
          if ((await r.stats()).volumes.some((v) => v.volumeId === vid)) await r.compact(vid, true);
          await check(r);
          await r.close();
          r = await openStore(d, SMALL);
          await check(r);
          await fillers(r);
          expect((await r.scrub()).corrupt).toEqual([]);
          await r.close();
        }
      }
    }
  });

  it('reports a corrupt needle a copy superseded as superseded', async () => {
    const dir = await tempDir();
    const s = await openStore(dir);
    const first = await put(s, 'x', X);
    const h = await fs.open(path.join(dir, '1.dat'), 'r+');
    await h.write(new Uint8Array([0xff]), 0, 1, first.offset + NEEDLE_HEADER_SIZE + 1 + 100);
    await h.close();
    expect((await s.scrub()).corrupt).toMatchObject([{ blobId: 'x', superseded: false }]);
    expect(await s.delete('x')).toBe(true);
    await put(s, 'x', X, { replica: true });
    expect(hex(await get(s, 'x'))).toBe(hex(X));
    expect((await s.scrub()).corrupt).toMatchObject([
      { blobId: 'x', offset: first.offset, superseded: true },
    ]);
  });
});

type Op =
  | { t: 'put'; id: string; seed: number; replica: boolean }
  | { t: 'delete'; id: string }
  | { t: 'restart' }
  | { t: 'compact'; pick: number }
  | { t: 'clock'; delta: number };

const IDS = ['a', 'b', 'c'];
const content = (id: string, seed: number) => blob(300 + seed * 1100 + id.charCodeAt(0), seed);

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      t: fc.constant('put' as const),
      id: fc.constantFrom(...IDS),
      seed: fc.integer({ min: 0, max: 2 }),
      replica: fc.boolean(),
    }),
  },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('delete' as const), id: fc.constantFrom(...IDS) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('restart' as const) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('compact' as const), pick: fc.nat(8) }) },
  {
    weight: 1,
    arbitrary: fc.record({ t: fc.constant('clock' as const), delta: fc.integer({ min: -50, max: 50 }) }),
  },
);

/** The reference model: per id, the seed of its live content, or 'deleted'. */
type Model = Map<string, number | 'deleted'>;

describe('stamp ordering against a reference model', () => {
  it('matches the model after random writes, copies, deletes, restarts, compactions and clock steps', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 30 }), async (ops) => {
        const dir = await tempDir();
        let now = 1_000_000;
        const opts: Partial<StoreOpenOptions> = { ...SMALL, clock: { now: () => now } };
        let s = await openStore(dir, opts);
        const model: Model = new Map();
        try {
          for (const op of ops) {
            if (op.t === 'clock') now += op.delta;
            else if (op.t === 'restart') {
              await s.close();
              s = await openStore(dir, opts);
            } else if (op.t === 'compact') {
              const vols = (await s.stats()).volumes;
              const v = vols[op.pick % (vols.length + 1)];
              await s.compact(v?.volumeId, true);
            } else if (op.t === 'delete') {
              const was = model.get(op.id);
              expect(await s.delete(op.id)).toBe(was !== undefined && was !== 'deleted');
              if (was !== undefined) model.set(op.id, 'deleted');
            } else {
              const was = model.get(op.id);
              const got = await put(s, op.id, content(op.id, op.seed), { replica: op.replica }).then(
                (r) => (r.existed ? 'existed' : 'written'),
                (e: unknown) => (e instanceof AlreadyExistsError ? e.reason : Promise.reject(e)),
              );
              const want =
                was === undefined
                  ? 'written'
                  : was === 'deleted'
                    ? op.replica
                      ? 'written'
                      : 'deleted'
                    : was === op.seed
                      ? 'existed'
                      : 'different-content';
              expect(got, JSON.stringify(op)).toBe(want);
              if (want === 'written') model.set(op.id, op.seed);
            }
          }
          await s.close();
          s = await openStore(dir, opts);
          for (const id of IDS) {
            const m = model.get(id);
            if (m === undefined || m === 'deleted') {
              await expect(s.openRead(id), id).rejects.toBeInstanceOf(NotFoundError);
            } else {
              expect(hex(await get(s, id)), id).toBe(hex(content(id, m)));
            }
          }
          const liveCount = [...model.values()].filter((m) => m !== 'deleted').length;
          expect((await s.stats()).needleCount).toBe(liveCount);
          expect((await s.scrub()).corrupt).toEqual([]);
        } finally {
          await s.close();
          await fs.rm(dir, { recursive: true, force: true });
        }
      }),
      { numRuns: 60 },
    );
  }, 120_000);
});
