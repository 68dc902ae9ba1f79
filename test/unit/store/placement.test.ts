import { describe, expect, it } from 'vitest';
import type { KeyHash } from '../../../internal/common/key-hash.js';
import { placementGroupOf } from '../../../internal/common/placement.js';
import { InvalidArgumentError, NotFoundError } from '../../../internal/store/errors.js';
import { decodeGroupCursor, encodeGroupCursor } from '../../../internal/store/group-cursor.js';
import type { GroupCursor, Store } from '../../../internal/store/store.js';
import { blob, get, hex, openStore, put, sha256, tempDir } from './helpers.js';

/** Every needle of one group, page by page; checks each page's bound and the order. */
async function listAll(
  s: Store,
  o: { groupCount: number; group: number; limit: number; includeDeleted?: boolean; prefix?: string },
  between?: (page: number) => Promise<void>,
) {
  const ids: string[] = [];
  let after: GroupCursor | undefined;
  for (let page = 0; page < 10_000; page++) {
    const res = await s.listPlacementGroup({ ...o, ...(after ? { after } : {}) });
    expect(res.needles.length).toBeLessThanOrEqual(o.limit);
    ids.push(...res.needles.map((n) => n.blobId));
    if (!res.next) return ids;
    // Tokens survive their wire encoding.
    after = decodeGroupCursor(encodeGroupCursor(res.next)) as GroupCursor;
    await between?.(page);
  }
  throw new Error('listing did not end');
}

describe('Stat and needle facts', () => {
  it('answers the facts of the newest needle; cookie and tombstone rules', async () => {
    const s = await openStore(await tempDir());
    const data = blob(5000, 1);
    const w = await put(s, 'photo', data, {
      cookie: 9n,
      contentType: 'image/jpeg',
      fileName: 'Été 2024.jpg',
    });
    const f = await s.stat('photo');
    expect(f).toMatchObject({
      blobId: 'photo',
      cookie: 9n,
      size: 5000,
      contentType: 'image/jpeg',
      fileName: 'Été 2024.jpg',
      writtenAtMs: w.writtenAtMs,
      deleted: false,
      crc32c: w.crc32c,
      volumeId: w.volumeId,
    });
    expect(hex(f.sha256!)).toBe(hex(sha256(data)));
    expect((await s.stat('photo', { cookie: 9n })).cookie).toBe(9n);
    await expect(s.stat('photo', { cookie: 8n })).rejects.toBeInstanceOf(NotFoundError);
    await expect(s.stat('nothing')).rejects.toBeInstanceOf(NotFoundError);
    expect(await s.delete('photo')).toBe(true);
    await expect(s.stat('photo')).rejects.toThrow(/deleted/);
    const t = await s.stat('photo', { includeDeleted: true });
    expect(t).toMatchObject({ deleted: true, size: 0, cookie: 9n });
    expect(t.sha256).toBeUndefined();
    expect(t.writtenAtMs).toBeGreaterThan(w.writtenAtMs);
  });

  it('refuses over-long or control-character content types and file names', async () => {
    const s = await openStore(await tempDir());
    await expect(put(s, 'a', blob(1, 1), { fileName: 'é'.repeat(128) })).rejects.toThrow(
      /256 bytes of UTF-8/,
    );
    await expect(put(s, 'a', blob(1, 1), { contentType: 'text/plain\r\nx: y' })).rejects.toThrow(/control/);
    await put(s, 'a', blob(1, 1), { fileName: 'é'.repeat(127) });
    expect((await s.stat('a')).fileName).toBe('é'.repeat(127));
  });
});

describe('stamps given by the caller', () => {
  it('a forwarded write takes the given stamp, or stamps above a record here that is not older', async () => {
    const s = await openStore(await tempDir());
    expect((await put(s, 'f', blob(10, 1), { stamp: 5_000 })).writtenAtMs).toBe(5_000);
    expect(await s.delete('g', { stamp: 9_000 })).toBe(false); // a tombstone copy of an unknown id
    expect((await s.stat('g', { includeDeleted: true })).writtenAtMs).toBe(9_000);
    expect((await put(s, 'g', blob(10, 2), { stamp: 8_000 })).writtenAtMs).toBe(9_001);
    expect(hex(await get(s, 'g'))).toBe(hex(blob(10, 2)));
  });

  it('keepStamp copies verbatim over older records and keeps newer-or-equal ones', async () => {
    const s = await openStore(await tempDir());
    await put(s, 'k', blob(100, 1), { stamp: 2_000, cookie: 1n });
    // Older live needle with other content: the newer copy supersedes it.
    const c = await put(s, 'k', blob(200, 2), {
      stamp: 3_000,
      cookie: 2n,
      keepStamp: true,
      contentType: 'a/b',
    });
    expect(c).toMatchObject({ existed: false, kept: false, writtenAtMs: 3_000, cookie: 2n });
    expect(hex(await get(s, 'k'))).toBe(hex(blob(200, 2)));
    expect((await s.stat('k')).contentType).toBe('a/b');
    // Equal or older stamp: kept, nothing written.
    for (const stamp of [3_000, 2_500]) {
      const k = await put(s, 'k', blob(300, 3), { stamp, cookie: 3n, keepStamp: true });
      expect(k).toMatchObject({ kept: true, existed: true, writtenAtMs: 3_000, cookie: 2n });
    }
    expect(hex(await get(s, 'k'))).toBe(hex(blob(200, 2)));
    // A newer tombstone here is kept too; an older one is superseded.
    expect(await s.delete('k', { stamp: 4_000 })).toBe(true);
    expect((await put(s, 'k', blob(10, 4), { stamp: 3_500, keepStamp: true })).kept).toBe(true);
    await expect(s.openRead('k')).rejects.toBeInstanceOf(NotFoundError);
    expect((await put(s, 'k', blob(10, 4), { stamp: 4_500, keepStamp: true })).writtenAtMs).toBe(4_500);
    expect(hex(await get(s, 'k'))).toBe(hex(blob(10, 4)));
  });

  it('a stamped delete keeps a newer needle, replaces an older or equal one, converges tombstones', async () => {
    const dir = await tempDir();
    let s = await openStore(dir);
    await put(s, 'n', blob(10, 1), { stamp: 5_000 });
    expect(await s.delete('n', { stamp: 4_000 })).toBe(false); // newer needle kept
    expect(hex(await get(s, 'n'))).toBe(hex(blob(10, 1)));
    expect(await s.delete('n', { stamp: 5_000 })).toBe(true); // a tombstone wins a stamp tie
    expect((await s.stat('n', { includeDeleted: true })).writtenAtMs).toBe(5_000);
    expect(await s.delete('n', { stamp: 5_000 })).toBe(false); // already there
    expect(await s.delete('n', { stamp: 6_000 })).toBe(false); // an older tombstone takes the newer stamp
    expect((await s.stat('n', { includeDeleted: true })).writtenAtMs).toBe(6_000);
    await s.close();
    s = await openStore(dir);
    expect((await s.stat('n', { includeDeleted: true })).writtenAtMs).toBe(6_000);
    await expect(s.delete('n', { stamp: -1 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(put(s, 'n', blob(1, 1), { stamp: 2 ** 48 })).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});

describe('live bytes per placement group', () => {
  /** What a fresh count (one pass over the needle map) gives. */
  const recount = (s: Store, groups: number) => {
    s.trackGroups(0);
    s.trackGroups(groups);
    return s.liveBytesByGroup();
  };

  it('follow writes, tombstones, compaction and a restart as a recount does', async () => {
    const G = 5;
    const dir = await tempDir();
    const s = await openStore(dir, { maxVolumeSize: 32 << 10 });
    expect(s.liveBytesByGroup()).toEqual({ groupCount: 0, groups: [] });
    s.trackGroups(G);
    const ids = Array.from({ length: 60 }, (_, i) => `pg-${i}`);
    for (const [i, id] of ids.entries()) await put(s, id, blob(100 + 37 * i, i));
    const afterWrites = s.liveBytesByGroup();
    expect(afterWrites.groupCount).toBe(G);
    expect(afterWrites.groups.map((g) => g.group)).toEqual(
      [...new Set(ids.map((id) => placementGroupOf(id, G)))].sort((a, b) => a - b),
    );
    // Each needle counts its content and its header/footer: more than the content, never less.
    const content = ids.reduce((n, _, i) => n + 100 + 37 * i, 0);
    const total = afterWrites.groups.reduce((n, g) => n + g.bytes, 0);
    expect(total).toBeGreaterThan(content);
    expect(total).toBeLessThan(content + ids.length * 200);
    for (const id of ids.filter((_, i) => i % 3 === 0)) expect(await s.delete(id)).toBe(true);
    const afterDeletes = s.liveBytesByGroup();
    expect(afterDeletes.groups.reduce((n, g) => n + g.bytes, 0)).toBeLessThan(total);
    await s.compact(undefined, true);
    expect(s.liveBytesByGroup()).toEqual(afterDeletes);
    expect(recount(s, G)).toEqual(afterDeletes);
    await s.close();
    const again = await openStore(dir, { maxVolumeSize: 32 << 10 });
    again.trackGroups(G);
    expect(again.liveBytesByGroup()).toEqual(afterDeletes);
    // Deleting every remaining needle of a group leaves it out.
    const g0 = ids.filter((id, i) => i % 3 !== 0 && placementGroupOf(id, G) === 0);
    for (const id of g0) await again.delete(id);
    expect(again.liveBytesByGroup().groups.find((g) => g.group === 0)).toBeUndefined();
  });
});

describe('placement-group listing', () => {
  const G = 4;
  const ids = Array.from({ length: 240 }, (_, i) => `img-${i % 3 === 0 ? 'a' : 'b'}-${i}`);

  it('pages through exactly the group, once each, stable across a compaction; prefix and tombstones', async () => {
    const s = await openStore(await tempDir(), { maxVolumeSize: 64 << 10 });
    for (const [i, id] of ids.entries()) await put(s, id, blob(50 + i, i));
    const deleted = ids.filter((_, i) => i % 5 === 0);
    for (const id of deleted) expect(await s.delete(id)).toBe(true);
    for (let g = 0; g < G; g++) {
      const want = ids.filter((id) => placementGroupOf(id, G) === g);
      const live = want.filter((id) => !deleted.includes(id));
      const got = await listAll(s, { groupCount: G, group: g, limit: 7 });
      expect([...got].sort()).toEqual([...live].sort());
      expect(new Set(got).size).toBe(got.length);
      // The same order whatever the page size; a compaction between pages changes nothing.
      expect(await listAll(s, { groupCount: G, group: g, limit: 1000 })).toEqual(got);
      const during = await listAll(s, { groupCount: G, group: g, limit: 5 }, async (page) => {
        if (page === 1) await s.compact(undefined, true);
      });
      expect(during).toEqual(got);
      const all = await listAll(s, { groupCount: G, group: g, limit: 9, includeDeleted: true });
      expect([...all].sort()).toEqual([...want].sort());
      const a = await listAll(s, { groupCount: G, group: g, limit: 3, prefix: 'img-a-' });
      expect([...a].sort()).toEqual(live.filter((id) => id.startsWith('img-a-')).sort());
    }
    const page = await s.listPlacementGroup({ groupCount: G, group: 1, limit: 1000, includeDeleted: true });
    const t = page.needles.find((n) => n.deleted);
    expect(t).toBeDefined();
    expect(t?.size).toBe(0);
    const n = page.needles.find((x) => !x.deleted)!;
    expect(hex(n.sha256!)).toBe(hex(sha256(await get(s, n.blobId))));
  });

  it('bounds the reads of a page: sparse prefix matches come back over short (even empty) pages', async () => {
    const s = await openStore(await tempDir());
    for (const [i, id] of ids.entries()) await put(s, id, blob(20, i));
    const want = ids.filter((id) => placementGroupOf(id, G) === 2 && id.startsWith('img-a-'));
    const pages: number[] = [];
    const got: string[] = [];
    let after: GroupCursor | undefined;
    for (;;) {
      const res = await s.listPlacementGroup({
        groupCount: G,
        group: 2,
        limit: 100,
        prefix: 'img-a-',
        readBudget: 4,
        ...(after ? { after } : {}),
      });
      pages.push(res.needles.length);
      got.push(...res.needles.map((n) => n.blobId));
      if (!res.next) break;
      after = res.next;
    }
    expect([...got].sort()).toEqual([...want].sort());
    expect(Math.max(...pages)).toBeLessThanOrEqual(4); // never more needles than reads
    expect(pages.length).toBeGreaterThan(want.length / 4);
  });

  it('orders ids sharing one hash by id, across pages', async () => {
    const collide: KeyHash = (_k, out) => {
      out[0] = 77;
      out[1] = 5;
    };
    const s = await openStore(await tempDir(), { keyHash: collide });
    const same = Array.from({ length: 20 }, (_, i) => `c-${String(i).padStart(2, '0')}`);
    for (const [i, id] of same.entries()) await put(s, id, blob(10, i));
    // Every id has high half 5: group 5 % 8.
    const got = await listAll(s, { groupCount: 8, group: 5, limit: 3 });
    expect(got).toEqual(same);
    expect(await listAll(s, { groupCount: 8, group: 4, limit: 3 })).toEqual([]);
  });

  it('refuses bad bounds with precise messages', async () => {
    const s = await openStore(await tempDir());
    await expect(s.listPlacementGroup({ groupCount: 0, group: 0, limit: 1 })).rejects.toThrow(/1\.\.65536/);
    await expect(s.listPlacementGroup({ groupCount: 70_000, group: 0, limit: 1 })).rejects.toThrow(/70000/);
    await expect(s.listPlacementGroup({ groupCount: 4, group: 4, limit: 1 })).rejects.toThrow(/group 4/);
    await expect(s.listPlacementGroup({ groupCount: 4, group: 0, limit: 1001 })).rejects.toThrow(/1001/);
    expect(decodeGroupCursor('not a token!')).toMatch(/not a token/);
    expect(decodeGroupCursor(Buffer.from([2, 0, 0, 0, 0, 0, 0, 0, 0, 65]).toString('base64url'))).toMatch(
      /not a token/,
    );
    expect(() => s.placementDigests(0)).toThrow(InvalidArgumentError);
  });
});

describe('placement digests', () => {
  it('agree between stores holding the same newest needles and differ after one more write', async () => {
    const a = await openStore(await tempDir());
    const b = await openStore(await tempDir());
    const ids = Array.from({ length: 60 }, (_, i) => `d-${i}`);
    for (const [i, id] of ids.entries()) {
      const w = await put(a, id, blob(20 + i, i), { cookie: BigInt(i + 1) });
      // b gets the same needle as a forwarded write would (same stamp), in another order below.
      void w;
    }
    for (const id of [...ids].reverse()) {
      const f = await a.stat(id);
      await put(b, id, await get(a, id), { cookie: f.cookie, stamp: f.writtenAtMs });
    }
    for (const id of ids.slice(0, 6)) {
      expect(await a.delete(id)).toBe(true);
      const t = await a.stat(id, { includeDeleted: true });
      expect(await b.delete(id, { stamp: t.writtenAtMs })).toBe(true);
    }
    const da = a.placementDigests(8);
    expect(da.reduce((n, d) => n + d.needles, 0)).toBe(60);
    expect(da.map((d) => d.group)).toEqual([...da.map((d) => d.group)].sort((x, y) => x - y));
    expect(b.placementDigests(8)).toEqual(da);
    await b.compact(undefined, true); // moves needles: digests depend on needles, not places
    expect(b.placementDigests(8)).toEqual(da);
    // One more write on b: its group's digest and count differ, the others do not.
    await put(b, 'extra', blob(5, 5));
    const g = placementGroupOf('extra', 8);
    const db = b.placementDigests(8);
    for (const d of db) {
      const other = da.find((x) => x.group === d.group);
      if (d.group === g) {
        expect(d.needles).toBe((other?.needles ?? 0) + 1);
        expect(d.digest).not.toBe(other?.digest);
      } else expect(d).toEqual(other);
    }
    // A tombstone with another stamp changes the digest too (same ids, same count).
    const c = await openStore(await tempDir());
    const d = await openStore(await tempDir());
    await put(c, 'x', blob(5, 1), { stamp: 1_000 });
    await put(d, 'x', blob(5, 1), { stamp: 1_000 });
    expect(c.placementDigests(1)).toEqual(d.placementDigests(1));
    await c.delete('x', { stamp: 2_000 });
    await d.delete('x', { stamp: 2_001 });
    expect(c.placementDigests(1)[0]?.needles).toBe(1);
    expect(c.placementDigests(1)[0]?.digest).not.toBe(d.placementDigests(1)[0]?.digest);
  });
});
