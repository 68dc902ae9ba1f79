import { afterEach, describe, expect, it } from 'vitest';
import { crc32c } from '../../../internal/store/crc32c.js';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../../../internal/store/errors.js';
import { ShardStore } from '../../../internal/store/shard-store.js';
import { blob, openStore, tempDir } from './helpers.js';

const open: ShardStore[] = [];
afterEach(async () => {
  for (const s of open.splice(0)) await s.close().catch(() => {});
});
async function openShards(dataDir: string): Promise<ShardStore> {
  const s = await ShardStore.open({ dataDir, maxVolumeSize: 1 << 20 });
  open.push(s);
  return s;
}
async function* chunks(b: Uint8Array, size = 1000): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}
async function readAll(s: ShardStore, stripe: string, i: number): Promise<Buffer> {
  const r = await s.openRead(stripe, i);
  const parts: Uint8Array[] = [];
  for await (const c of r.stream()) parts.push(c);
  return Buffer.concat(parts);
}
const shard = (b: Uint8Array, replace = false) => ({
  stripeId: 'cold-1',
  index: 2,
  size: b.length,
  crc32c: crc32c(b),
  replace,
});

describe('shard engine', () => {
  it('stores shards durably, apart from the blob needles of the same data directory', async () => {
    const dir = await tempDir();
    const s = await openShards(dir);
    const b = blob(5000, 1);
    expect((await s.write(shard(b), chunks(b))).written).toBe(true);
    await s.close();
    open.pop();
    const again = await openShards(dir);
    expect((await readAll(again, 'cold-1', 2)).equals(Buffer.from(b))).toBe(true);
    // The blob engine of the same directory sees no needle: shards live under <dataDir>/ec.
    const blobs = await openStore(dir);
    expect(await blobs.listNeedles(undefined, 10)).toEqual([]);
    expect(blobs.placementDigests(4)).toEqual([]);
  });

  it('is idempotent for identical bytes, refuses other bytes unless replacing, and replaces intact shards not at all', async () => {
    const s = await openShards(await tempDir());
    const b = blob(3000, 2);
    await s.write(shard(b), chunks(b));
    expect((await s.write(shard(b), chunks(b))).written).toBe(false);
    const other = blob(3000, 3);
    await expect(s.write(shard(other), chunks(other))).rejects.toThrow(AlreadyExistsError);
    expect((await s.write(shard(b, true), chunks(b))).written).toBe(false);
    expect((await s.write(shard(other, true), chunks(other))).written).toBe(true);
    expect((await readAll(s, 'cold-1', 2)).equals(Buffer.from(other))).toBe(true);
  });

  it('commits nothing when the bytes miss the CRC32C or the declared size', async () => {
    const s = await openShards(await tempDir());
    const b = blob(3000, 4);
    await expect(s.write({ ...shard(b), crc32c: crc32c(b) ^ 1 }, chunks(b))).rejects.toThrow(
      InvalidArgumentError,
    );
    await expect(s.write({ ...shard(b), size: 4000 }, chunks(b))).rejects.toThrow(InvalidArgumentError);
    await expect(s.openRead('cold-1', 2)).rejects.toThrow(NotFoundError);
  });

  it('deletes a shard with a durable tombstone', async () => {
    const dir = await tempDir();
    const s = await openShards(dir);
    const b = blob(100, 5);
    await s.write(shard(b), chunks(b));
    expect(await s.delete('cold-1', 2)).toBe(true);
    expect(await s.delete('cold-1', 2)).toBe(false);
    await s.close();
    open.pop();
    const again = await openShards(dir);
    await expect(again.openRead('cold-1', 2)).rejects.toThrow(NotFoundError);
  });
});

describe('shard totals', () => {
  it('never leave an older recount cached over a newer one (two callers at once, a delete between)', async () => {
    const s = await openShards(await tempDir());
    for (const index of [1, 2]) {
      const b = blob(1000, index);
      await s.write({ ...shard(b), index }, chunks(b));
    }
    // The first recount reads the index before the delete and answers after the second.
    const list = s.engine.listNeedles.bind(s.engine);
    let release = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    let calls = 0;
    let firstRead = () => {};
    const read = new Promise<void>((r) => {
      firstRead = r;
    });
    s.engine.listNeedles = async (after, limit) => {
      const page = await list(after, limit);
      if (calls++ === 0) {
        firstRead();
        await held;
      }
      return page;
    };
    const t0 = performance.now();
    const first = s.totals(t0);
    await read; // the first recount has read its page
    expect(await s.delete('cold-1', 1)).toBe(true);
    const second = s.totals(t0 + 10_000);
    // Let the second answer first if it does not wait for the first (it must not land after it).
    await Promise.race([second, new Promise((r) => setTimeout(r, 300))]);
    release();
    await Promise.all([first, second]);
    expect((await s.totals(t0 + 20_000)).count).toBe(1);
  });
});

describe('shard totals and a delete that lands during a recount', () => {
  it('recount once the delete has landed, not only when it began', async () => {
    const s = await openShards(await tempDir());
    for (const index of [1, 2]) {
      const b = blob(1000, index);
      await s.write({ ...shard(b), index }, chunks(b));
    }
    // The delete is slow to land: a recount runs after it began and before it landed.
    const del = s.engine.delete.bind(s.engine);
    let release = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    s.engine.delete = async (key) => {
      await held;
      return del(key);
    };
    const t0 = performance.now();
    const deleting = s.delete('cold-1', 1);
    expect((await s.totals(t0)).count).toBe(2); // the shard is still there
    release();
    expect(await deleting).toBe(true);
    expect((await s.totals(t0 + 10_000)).count).toBe(1);
  });
});
