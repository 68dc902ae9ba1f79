import fs from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AlreadyExistsError, NotFoundError } from '../../../internal/store/errors.js';
import { INDEX_HEADER_SIZE, scanIndexFile } from '../../../internal/store/index-file.js';
import { NEEDLE_HEADER_SIZE } from '../../../internal/store/needle.js';
import type { Store, StoreOpenOptions } from '../../../internal/store/store.js';
import { blob, get, hex, openStore, put, tempDir } from './helpers.js';

/**
 * Needles and tombstones are ordered by their stamp, strictly increasing per
 * key: a new needle (a re-upload, a copy) supersedes an older tombstone, a delete
 * supersedes an older needle, whatever volumes they sit in, through restarts
 * and compaction. A key's first record is stamped with the wall clock, however
 * many records the store writes per millisecond.
 */

const SMALL: Partial<StoreOpenOptions> = { maxVolumeSize: 8192 };
const X = blob(3000, 1);

/** The id's newest record is a tombstone (checked without writing: a write would now supersede it). */
async function expectDeleted(s: Store, id: string): Promise<void> {
  await expect(s.openRead(id), id).rejects.toBeInstanceOf(NotFoundError);
  expect((await s.stat(id, { includeDeleted: true })).deleted, id).toBe(true);
}

async function copyDir(from: string): Promise<string> {
  const to = await tempDir();
  await fs.cp(from, to, { recursive: true });
  return to;
}

/** The stamps of `key`'s index records, in volume and then file order. */
async function stamps(dir: string, key: string): Promise<number[]> {
  const idx = (await fs.readdir(dir)).filter((n) => /^\d+\.idx$/.test(n));
  const out: number[] = [];
  for (const name of idx.sort((a, b) => Number.parseInt(a, 10) - Number.parseInt(b, 10))) {
    const h = await fs.open(path.join(dir, name), 'r');
    try {
      await scanIndexFile(h, INDEX_HEADER_SIZE, (await h.stat()).size, (r) => {
        if (r.key === key) out.push(r.writtenAtMs);
      });
    } finally {
      await h.close();
    }
  }
  return out;
}

function permutations<T>(xs: T[]): T[][] {
  if (xs.length <= 1) return [xs];
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
}

describe('stamp-ordered needles and tombstones', () => {
  it('takes a new needle over a tombstone (re-upload after delete); both survive a restart', async () => {
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

  it("keeps one key's stamps increasing when the clock stands still or steps back across a restart", async () => {
    const dir = await tempDir();
    let now = 5_000;
    const clock = { now: () => now };
    let s = await openStore(dir, { clock });
    await put(s, 'x', X);
    expect(await s.delete('x')).toBe(true);
    await put(s, 'x', X, { replica: true }); // all three at the same clock reading
    expect((await s.openRead('x')).writtenAtMs).toBe(5_002);
    await put(s, 'y', X); // a new key: the clock, whatever other keys got
    expect((await s.openRead('y')).writtenAtMs).toBe(5_000);
    await s.close();
    now = 1_000; // the clock stepped back
    s = await openStore(dir, { clock });
    expect(hex(await get(s, 'x'))).toBe(hex(X));
    expect(await s.delete('x')).toBe(true);
    await put(s, 'x', X, { replica: true });
    expect((await s.openRead('x')).writtenAtMs).toBe(5_004);
    expect(await s.delete('y')).toBe(true);
    await put(s, 'z', X);
    expect((await s.openRead('z')).writtenAtMs).toBe(1_000);
    await s.close();
    s = await openStore(dir, { clock });
    expect(hex(await get(s, 'x'))).toBe(hex(X));
    expect(await s.delete('x')).toBe(true);
    await s.close();
    expect(await stamps(dir, 'x')).toEqual([5_000, 5_001, 5_002, 5_003, 5_004, 5_005]);
    expect(await stamps(dir, 'y')).toEqual([5_000, 5_001]);
    expect(await stamps(dir, 'z')).toEqual([1_000]);
    s = await openStore(dir, { clock });
    await expectDeleted(s, 'x');
    await expectDeleted(s, 'y');
  });

  it('stamps a record whose commit failed below the next record of its key, in case a restart brings it back', async () => {
    const dir = await tempDir();
    const T = 9_000;
    let failing = false;
    const written: [number, number][] = [];
    const opts: Partial<StoreOpenOptions> = {
      clock: { now: () => T },
      hooks: {
        // The index append fails, and so does the wipe of the failed needle's
        // footer (a second write over bytes written): the record stays whole on disk.
        beforeWrite: (file, _v, pos, len) => {
          if (!failing) return;
          if (file === 'idx' && pos >= INDEX_HEADER_SIZE) throw new Error('EIO: i/o error');
          if (file === 'dat' && written.some(([from, to]) => pos >= from && pos < to))
            throw new Error('EIO: i/o error');
          if (file === 'dat') written.push([pos, pos + len]);
        },
      },
    };
    let s = await openStore(dir, opts);
    await put(s, 'x', X);
    failing = true;
    await expect(s.delete('x')).rejects.toThrow('EIO');
    await expect(put(s, 'y', X)).rejects.toThrow('EIO');
    failing = false;
    // Both keys as the failures left them in memory: x live, y absent.
    expect(hex(await get(s, 'x'))).toBe(hex(X));
    await expect(s.openRead('y')).rejects.toBeInstanceOf(NotFoundError);
    expect(await s.delete('x')).toBe(true);
    const Y = blob(2000, 9);
    await put(s, 'y', Y);
    await s.close();
    s = await openStore(dir, opts); // recovery takes the failed records back from the volume tails
    expect(await stamps(dir, 'x')).toEqual([T, T + 1, T + 2]);
    expect(await stamps(dir, 'y')).toEqual([T, T + 1]);
    await expectDeleted(s, 'x');
    expect(hex(await get(s, 'y'))).toBe(hex(Y));
  });

  it('orders records across volumes through restarts and compaction of every volume in every order', async () => {
    const dir = await tempDir();
    let s = await openStore(dir, SMALL);
    // Volume 1: x's first needle, then a filler that fills it exactly.
    expect((await put(s, 'x', X)).volumeId).toBe(1);
    await put(s, 'f1', blob(4954, 2));
    // Volume 2: the tombstone, the copy that supersedes it, a filler.
    expect(await s.delete('x')).toBe(true);
    expect((await put(s, 'x', X, { replica: true })).volumeId).toBe(2);
    await put(s, 'f2', blob(4898, 3));
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
      expect(hex(await get(r, 'f1'))).toBe(hex(blob(4954, 2)));
      expect(hex(await get(r, 'f2'))).toBe(hex(blob(4898, 3)));
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

  it('takes a record over the one it superseded in a higher-numbered volume', async () => {
    const dir = await tempDir();
    let s = await openStore(dir, SMALL);
    const reopen = async () => {
      await s.close();
      s = await openStore(dir, SMALL);
    };
    // Volume 1: x, then a filler that fills it exactly; the tombstone goes to volume 2.
    expect((await put(s, 'x', X)).volumeId).toBe(1);
    await put(s, 'f1', blob(4954, 2));
    expect(await s.delete('x')).toBe(true);
    // Compacting volume 1 drops the superseded needle: the copy takes its place.
    await s.compact(1, true);
    expect((await put(s, 'x', X, { replica: true })).volumeId).toBe(1);
    await reopen();
    expect(hex(await get(s, 'x'))).toBe(hex(X));
    // Volume 1 is full again: a tombstone and a second copy go to volume 2.
    expect(await s.delete('x')).toBe(true);
    expect((await put(s, 'x', X, { replica: true })).volumeId).toBe(2);
    // Compacting volume 1 drops the first copy: the next tombstone goes there.
    await s.compact(1, true);
    expect(await s.delete('x')).toBe(true);
    await reopen();
    await expectDeleted(s, 'x');
    expect(hex(await get(s, 'f1'))).toBe(hex(blob(4954, 2)));
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

describe('stamps follow the wall clock', () => {
  const N = 5_000;
  const data = blob(16, 7);

  /** Writes N new keys, 250 at a time; `each` sees every key with the clock readings around its write. */
  async function burst(s: Store, each: (id: string, before: number, after: number) => void): Promise<void> {
    for (let i = 0; i < N; i += 250) {
      await Promise.all(
        Array.from({ length: 250 }, async (_, j) => {
          const id = `k${String(i + j).padStart(5, '0')}`;
          const before = Date.now();
          await put(s, id, data);
          each(id, before, Date.now());
        }),
      );
    }
  }

  it('stamps 5,000 new keys written within one clock reading with that reading', async () => {
    const now = 1_700_000_000_000;
    const dir = await tempDir();
    const s = await openStore(dir, { maxVolumeSize: 4 << 20, clock: { now: () => now } });
    await burst(s, () => {});
    const listed = await s.listNeedles(undefined, N);
    expect(listed).toHaveLength(N);
    expect(listed.filter((n) => n.writtenAtMs !== now)).toEqual([]);
    // A record superseding one in the same millisecond still gets a greater stamp.
    expect(await s.delete('k00000')).toBe(true);
    await put(s, 'k00000', data, { replica: true });
    expect(await stamps(dir, 'k00000')).toEqual([now, now + 1, now + 2]);
  });

  it('stamps a burst of 5,000 new keys at the wall clock, not ahead of it', async () => {
    const s = await openStore(await tempDir(), { maxVolumeSize: 4 << 20 });
    const windows = new Map<string, [number, number]>();
    const started = Date.now();
    await burst(s, (id, before, after) => windows.set(id, [before, after]));
    const rate = N / Math.max(1, Date.now() - started);
    const listed = await s.listNeedles(undefined, N);
    expect(listed).toHaveLength(N);
    const outside = listed.filter((n) => {
      const [before, after] = windows.get(n.blobId)!;
      return n.writtenAtMs < before || n.writtenAtMs > after;
    });
    expect(outside, `${rate.toFixed(1)} writes/ms`).toEqual([]);
  });
});

type Op =
  | { t: 'put'; id: string; seed: number; replica: boolean }
  | { t: 'delete'; id: string }
  | { t: 'restart' }
  | { t: 'compact'; pick: number }
  | { t: 'clock'; delta: number };

/**
 * The smallest volumes (4 KiB) hold one to three records, so a key's records
 * scatter over volumes in every order: a newer record often lands in a
 * lower-numbered volume (one with room left, or freed by compaction) than the
 * record it supersedes, and only stamps can tell them apart on load.
 */
const TINY: Partial<StoreOpenOptions> = { maxVolumeSize: 4096 };
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
        const opts: Partial<StoreOpenOptions> = { ...TINY, clock: { now: () => now } };
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
                was === undefined || was === 'deleted'
                  ? 'written'
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
