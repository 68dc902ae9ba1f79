import { describe, expect, it } from 'vitest';
import { hitRate, NoCache } from '../../../internal/cache/blob-cache.js';
import { MemoryBlobCache } from '../../../internal/cache/memory-cache.js';
import { blob } from './blob.js';

describe('MemoryBlobCache', () => {
  it('misses, then hits after a set, and counts both', async () => {
    const c = new MemoryBlobCache({ ttlMs: 1000, maxBlobSize: 100, maxBytes: 1000 });
    expect(await c.get('a')).toBeUndefined();
    await c.set(blob('a', 10), { readAgeMs: 0 });
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
    await c.set(blob('big', 101), { readAgeMs: 0 });
    expect(await c.get('big')).toBeUndefined();
    const bad = blob('bad', 10);
    bad.meta.size = 11;
    await c.set(bad, { readAgeMs: 0 });
    expect(await c.get('bad')).toBeUndefined();
  });

  it('expires entries after the TTL', async () => {
    let now = 0;
    const c = new MemoryBlobCache({ ttlMs: 1000, maxBlobSize: 100, maxBytes: 1000, now: () => now });
    await c.set(blob('a', 10), { readAgeMs: 0 });
    now = 999;
    expect(await c.get('a')).toBeDefined();
    now = 1000;
    expect(await c.get('a')).toBeUndefined();
    expect(c.size()).toEqual({ entries: 0, bytes: 0 });
  });

  it('evicts the least recently used entries beyond the byte budget', async () => {
    const c = new MemoryBlobCache({ ttlMs: 10_000, maxBlobSize: 100, maxBytes: 250 });
    await c.set(blob('a', 100), { readAgeMs: 0 });
    await c.set(blob('b', 100), { readAgeMs: 0 });
    await c.get('a'); // a is now more recent than b
    await c.set(blob('c', 100), { readAgeMs: 0 });
    expect(await c.get('b')).toBeUndefined();
    expect(await c.get('a')).toBeDefined();
    expect(await c.get('c')).toBeDefined();
    expect(c.size().bytes).toBe(200);
  });

  it('keeps a read-through fill from resurrecting a just-deleted blob; a fresh write replaces it', async () => {
    let now = 0;
    const c = new MemoryBlobCache({
      ttlMs: 10_000,
      maxBlobSize: 100,
      maxBytes: 1000,
      tombstoneMs: 500,
      now: () => now,
    });
    await c.set(blob('a', 10), { readAgeMs: 0 });
    await c.invalidate('a');
    expect(await c.get('a')).toBeUndefined();
    await c.set(blob('a', 10), { readAgeMs: 0 }); // a read that started before the delete
    expect(await c.get('a')).toBeUndefined();
    await c.set(blob('a', 10, 2), { fresh: true }); // a new upload of the id
    expect((await c.get('a'))?.data[0]).toBe(2);
    await c.invalidate('a');
    now = 501;
    await c.set(blob('a', 10), { readAgeMs: 0 });
    expect(await c.get('a')).toBeDefined();
  });

  it('drops a fill whose read began before a tombstone could have expired (a slow reader)', async () => {
    let now = 0;
    const c = new MemoryBlobCache({
      ttlMs: 10_000,
      maxBlobSize: 100,
      maxBytes: 1000,
      tombstoneMs: 500,
      now: () => now,
    });
    // The read began at 0, the delete at 10; the slow caller finishes at 600, after the tombstone.
    await c.invalidate('a');
    now = 600;
    await c.set(blob('a', 10), { readAgeMs: 600 });
    expect(await c.get('a')).toBeUndefined();
    await c.set(blob('a', 10), { readAgeMs: 249 }); // a read begun after the tombstone expired
    expect(await c.get('a')).toBeDefined();
    await c.set(blob('b', 10), { readAgeMs: Number.NaN });
    expect(await c.get('b')).toBeUndefined();
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
    await c.set(blob('x', 1), { readAgeMs: 0 });
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
