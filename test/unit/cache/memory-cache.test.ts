import { describe, expect, it } from 'vitest';
import { hitRate, NoCache } from '../../../internal/cache/blob-cache.js';
import { MemoryBlobCache, type MemoryCacheOptions } from '../../../internal/cache/memory-cache.js';
import { blob, fill, push } from './blob.js';

/** A cache on a clock the test sets (`at(ms)`), recording the reasons of dropped fills. */
function clocked(more: Partial<MemoryCacheOptions> = {}) {
  let now = 0;
  const dropped: string[] = [];
  const c = new MemoryBlobCache({
    ttlMs: 10_000,
    maxBlobSize: 100,
    maxBytes: 1000,
    now: () => now,
    observe: (_e, reason) => reason && dropped.push(reason),
    ...more,
  });
  return { c, dropped, at: (ms: number) => (now = ms) };
}

describe('MemoryBlobCache', () => {
  it('misses, then hits after a set, and counts both', async () => {
    const c = new MemoryBlobCache({ ttlMs: 1000, maxBlobSize: 100, maxBytes: 1000 });
    expect(await c.get('a')).toBeUndefined();
    await fill(c, blob('a', 10));
    const got = await c.get('a');
    expect(got?.meta.cookie).toBe(0xfedcba9876543210n);
    expect(got?.data).toEqual(new Uint8Array(10).fill(1));
    const s = await c.stats();
    expect(s.local).toEqual({ hits: 1, misses: 1 });
    expect(s.cluster).toEqual(s.local);
    expect(hitRate(s.local)).toBe(0.5);
  });

  it('does not cache blobs above the size limit or with a size mismatch', async () => {
    const c = new MemoryBlobCache({ ttlMs: 1000, maxBlobSize: 100, maxBytes: 1000 });
    await fill(c, blob('big', 101));
    expect(await c.get('big')).toBeUndefined();
    const bad = blob('bad', 10);
    bad.meta.size = 11;
    await fill(c, bad);
    expect(await c.get('bad')).toBeUndefined();
  });

  it('expires entries after the TTL', async () => {
    let now = 0;
    const c = new MemoryBlobCache({ ttlMs: 1000, maxBlobSize: 100, maxBytes: 1000, now: () => now });
    await fill(c, blob('a', 10));
    now = 999;
    expect(await c.get('a')).toBeDefined();
    now = 1000;
    expect(await c.get('a')).toBeUndefined();
    expect(c.size()).toEqual({ entries: 0, bytes: 0 });
  });

  it('evicts the least recently used entries beyond the byte budget', async () => {
    const c = new MemoryBlobCache({ ttlMs: 10_000, maxBlobSize: 100, maxBytes: 250 });
    await fill(c, blob('a', 100));
    await fill(c, blob('b', 100));
    await c.get('a'); // a is now more recent than b
    await fill(c, blob('c', 100));
    expect(await c.get('b')).toBeUndefined();
    expect(await c.get('a')).toBeDefined();
    expect(await c.get('c')).toBeDefined();
    expect(c.size().bytes).toBe(200);
  });

  it('keeps a read-through fill from resurrecting a just-deleted blob; a new write replaces it', async () => {
    const { c, dropped, at } = clocked({ tombstoneMs: 500 });
    await fill(c, blob('a', 10));
    const lease = await c.lease('b'); // a read that started before the delete
    await c.invalidate('a');
    await c.invalidate('b');
    expect(await c.get('a')).toBeUndefined();
    await c.set(blob('b', 10), { lease });
    expect(await c.get('b')).toBeUndefined();
    await fill(c, blob('a', 10)); // a read begun after it: no lease while the tombstone stands
    expect(await c.get('a')).toBeUndefined();
    expect(dropped).toEqual(['lease_lost', 'tombstone']);
    await push(c, blob('a', 10, 2)); // a new upload of the id
    expect((await c.get('a'))?.data[0]).toBe(2);
    await c.invalidate('a');
    at(501);
    await fill(c, blob('a', 10));
    expect(await c.get('a')).toBeDefined();
  });

  it('refuses a fill whose lease a delete revoked, however late it comes (no timer orders it)', async () => {
    const { c, dropped, at } = clocked({ tombstoneMs: 500, leaseMs: 1_000_000 });
    // The read takes its lease at 0, the delete comes at 10; the slow caller fills at 600,
    // long after the tombstone ended, its lease still unexpired.
    const lease = await c.lease('a');
    at(10);
    await c.invalidate('a');
    at(600);
    await c.set(blob('a', 10), { lease });
    expect(await c.get('a')).toBeUndefined();
    expect(dropped).toEqual(['lease_lost']);
    await fill(c, blob('a', 10)); // a read begun after the tombstone ended fills
    expect(await c.get('a')).toBeDefined();
  });

  it('grants one lease per id at a time; a released, used or expired one frees it', async () => {
    const { c, dropped, at } = clocked({ leaseMs: 100 });
    const first = await c.lease('a');
    const second = await c.lease('a');
    expect(first.token).toBeDefined();
    expect(second).toEqual({ blobId: 'a', refused: 'lease_held' });
    await c.set(blob('a', 10), { lease: second }); // the reader without the lease does not fill
    expect(await c.get('a')).toBeUndefined();
    await c.release(first);
    const third = await c.lease('a');
    expect(third.token).toBeDefined();
    await c.set(blob('a', 10), { lease: first }); // given back: no longer the id's lease
    expect(await c.get('a')).toBeUndefined();
    await c.set(blob('a', 10), { lease: third });
    expect(await c.get('a')).toBeDefined();
    expect(await c.lease('a')).toEqual({ blobId: 'a' }); // cached: nothing to fill
    const late = await c.lease('b');
    at(100); // expired: lost (liveness), and the id's lease is free again
    await c.set(blob('b', 10), { lease: late });
    expect(await c.get('b')).toBeUndefined();
    expect((await c.lease('b')).token).toBeDefined();
    expect(dropped).toEqual(['lease_held', 'lease_lost', 'lease_lost']);
  });

  it('a write lease revokes a fill lease taken before it and refuses those asked after it', async () => {
    const { c, dropped } = clocked();
    const lease = await c.lease('a');
    const write = await c.writeLease('a');
    expect(await c.lease('a')).toEqual({ blobId: 'a', refused: 'lease_held' });
    await c.set(blob('a', 10, 1), { lease });
    await c.set(blob('a', 10, 2), { push: write });
    expect((await c.get('a'))?.data[0]).toBe(2);
    expect(dropped).toEqual(['lease_lost']);
  });

  it('drops a push whose write lease a delete revoked (write_lease_lost), or another write took over', async () => {
    const { c, dropped, at } = clocked({ leaseMs: 100 });
    const write = await c.writeLease('a');
    await c.invalidate('a'); // acknowledged between the write's commit and its push
    await c.set(blob('a', 10), { push: write });
    expect(await c.get('a')).toBeUndefined();
    const first = await c.writeLease('b');
    const second = await c.writeLease('b');
    await c.set(blob('b', 10, 1), { push: first });
    expect(await c.get('b')).toBeUndefined();
    await c.set(blob('b', 10, 2), { push: second });
    expect((await c.get('b'))?.data[0]).toBe(2);
    const expired = await c.writeLease('c');
    at(100); // a write slower than the lease: no push (liveness only)
    await c.set(blob('c', 10), { push: expired });
    expect(await c.get('c')).toBeUndefined();
    expect(dropped).toEqual(['write_lease_lost', 'write_lease_lost', 'write_lease_lost']);
  });

  it('reports every lookup to its observer', async () => {
    const events: string[] = [];
    const c = new MemoryBlobCache({
      ttlMs: 1000,
      maxBlobSize: 100,
      maxBytes: 1000,
      observe: (e) => events.push(e),
    });
    await c.get('x');
    await fill(c, blob('x', 1));
    await c.get('x');
    expect(events).toEqual(['miss', 'hit']);
  });
});

describe('NoCache', () => {
  it('misses every time', async () => {
    const c = new NoCache();
    await c.set();
    expect(await c.get()).toBeUndefined();
    expect((await c.stats()).local).toEqual({ hits: 0, misses: 1 });
  });
});
