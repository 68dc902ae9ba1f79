import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeStub, STUB_CONTENT_TYPE } from '../../../internal/store/cold-stub.js';
import { crc32c } from '../../../internal/store/crc32c.js';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../../../internal/store/errors.js';
import { blob, get, hex, openStore, put, sha256, tempDir } from './helpers.js';

describe('Store basics', () => {
  it('writes, reads, range-reads, deletes and persists across restart', async () => {
    const dir = await tempDir();
    let s = await openStore(dir);
    const a = blob(100_000, 1);
    const b = blob(0, 2);
    const ra = await put(s, 'a', a, { cookie: 7n });
    expect(ra.existed).toBe(false);
    expect(ra.crc32c).toBe(crc32c(a));
    expect(hex(ra.sha256)).toBe(hex(sha256(a)));
    await put(s, 'empty', b);
    expect(hex(await get(s, 'a'))).toBe(hex(a));
    expect(hex(await get(s, 'a', 7n))).toBe(hex(a));
    expect((await get(s, 'empty')).length).toBe(0);
    expect(hex(await get(s, 'a', 0n, 5000, 12345))).toBe(hex(a.subarray(5000, 17345)));
    expect(hex(await get(s, 'a', undefined, 99_990))).toBe(hex(a.subarray(99_990)));
    expect((await get(s, 'a', undefined, 100_000)).length).toBe(0);
    const r = await s.openRead('a');
    expect(r.size).toBe(100_000);
    expect(r.crc32c).toBe(crc32c(a));
    expect(r.volumeId).toBe(ra.volumeId);
    await expect(s.openRead('a', 8n)).rejects.toBeInstanceOf(NotFoundError);
    await expect(s.openRead('nope')).rejects.toBeInstanceOf(NotFoundError);
    await expect(s.openRead('bad/id')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(async () => {
      for await (const _ of r.stream(50, 100_000)) void _;
    }).rejects.toBeInstanceOf(InvalidArgumentError);

    await put(s, 'doomed', blob(5000, 3));
    expect(await s.delete('doomed')).toBe(true);
    expect(await s.delete('doomed')).toBe(false);
    expect(await s.delete('never')).toBe(false);
    await expect(s.openRead('doomed')).rejects.toBeInstanceOf(NotFoundError);

    await s.close();
    s = await openStore(dir);
    expect(hex(await get(s, 'a', 7n))).toBe(hex(a));
    expect((await get(s, 'empty')).length).toBe(0);
    await expect(s.openRead('doomed')).rejects.toBeInstanceOf(NotFoundError);
    const st = await s.stats();
    expect(st.needleCount).toBe(2);
    expect(st.volumes).toHaveLength(1);
    expect(st.volumes[0]!.deletedCount).toBe(2); // the deleted needle + its tombstone
    expect(st.capacityBytes).toBeGreaterThan(0);
    expect(st.usedBytes).toBeGreaterThan(100_000);
  });

  it('compares a write over a cold stub with the blob the stub stands for: same bytes idempotent (stub cookie and stamp), other bytes ALREADY_EXISTS, nothing appended', async () => {
    const s = await openStore(await tempDir());
    const a = blob(3000, 11);
    const stub = encodeStub({ size: 3000n, sha256: sha256(a), contentType: 'image/png', fileName: '' });
    const written = await put(s, 'c', stub, { cookie: 7n, contentType: STUB_CONTENT_TYPE });
    const size = (await s.stats()).volumes[0]!.sizeBytes;
    const again = await put(s, 'c', a, { cookie: 8n });
    expect([again.existed, again.cookie, again.writtenAtMs]).toEqual([true, 7n, written.writtenAtMs]);
    expect([again.size, again.crc32c, hex(again.sha256)]).toEqual([3000, 0, hex(sha256(a))]);
    const b = a.slice();
    b[0]! ^= 1;
    await expect(put(s, 'c', b)).rejects.toBeInstanceOf(AlreadyExistsError);
    // The stub's own bytes are not the blob's either.
    await expect(put(s, 'c', stub)).rejects.toBeInstanceOf(AlreadyExistsError);
    expect((await s.stats()).volumes[0]!.sizeBytes).toBe(size);
  });

  it('is idempotent for identical rewrites (original cookie and stamp), rejects different content, takes a re-upload after delete', async () => {
    const s = await openStore(await tempDir());
    const a = blob(3000, 9);
    const first = await put(s, 'x', a);
    const again = await put(s, 'x', a, { chunk: 1000 });
    expect(again.existed).toBe(true);
    expect(again.offset).toBe(first.offset);
    expect(again.volumeId).toBe(first.volumeId);
    expect(hex(again.sha256)).toBe(hex(first.sha256));
    const b = a.slice();
    b[10]! ^= 1;
    const err = await put(s, 'x', b).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AlreadyExistsError);
    expect((err as AlreadyExistsError).message).toMatch(/already exists here with different content/);
    await expect(put(s, 'x', a.subarray(0, 2999))).rejects.toBeInstanceOf(AlreadyExistsError);
    // A retry with another cookie is the same upload: it keeps the original cookie and stamp.
    const retry = await put(s, 'x', a, { cookie: 43n });
    expect(retry.existed).toBe(true);
    expect(retry.cookie).toBe(42n);
    expect(retry.writtenAtMs).toBe(first.writtenAtMs);
    expect((await s.stats()).volumes[0]!.sizeBytes).toBe(first.offset + 3088); // nothing appended
    // Re-upload after delete: stored again, stamped above the tombstone.
    expect(await s.delete('x')).toBe(true);
    const tomb = await s.stat('x', { includeDeleted: true });
    expect(tomb.deleted).toBe(true);
    const again2 = await put(s, 'x', b, { cookie: 44n });
    expect(again2.existed).toBe(false);
    expect(again2.cookie).toBe(44n);
    expect(again2.writtenAtMs).toBeGreaterThan(tomb.writtenAtMs);
    expect(hex(await get(s, 'x'))).toBe(hex(b));
  });

  it('commits nothing for a short stream, an overlong stream, a SHA-256 mismatch or an abort', async () => {
    const dir = await tempDir();
    let s = await openStore(dir);
    const a = blob(10_000, 4);
    const w = await s.beginWrite('short', 1n, 10_000);
    await w.write(a.subarray(0, 9_999));
    await expect(w.commit()).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(s.openRead('short')).rejects.toBeInstanceOf(NotFoundError);

    const w2 = await s.beginWrite('long', 1n, 10);
    await expect(w2.write(a.subarray(0, 11))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(s.openRead('long')).rejects.toBeInstanceOf(NotFoundError);

    const wrongSha = sha256(a.subarray(1));
    await expect(put(s, 'sha', a, { sha: wrongSha })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(s.openRead('sha')).rejects.toBeInstanceOf(NotFoundError);

    const w3 = await s.beginWrite('aborted', 1n, 100);
    await w3.write(a.subarray(0, 100));
    await w3.abort();
    await expect(s.openRead('aborted')).rejects.toBeInstanceOf(NotFoundError);

    // the correct sha commits; the ids above remain writable
    await put(s, 'sha', a, { sha: sha256(a) });
    await put(s, 'short', a);
    await s.close();
    s = await openStore(dir);
    for (const id of ['long', 'aborted']) await expect(s.openRead(id)).rejects.toBeInstanceOf(NotFoundError);
    expect(hex(await get(s, 'sha'))).toBe(hex(a));
    expect(hex(await get(s, 'short'))).toBe(hex(a));
    expect((await s.stats()).needleCount).toBe(2);
  });

  it('gives back the space of writes that stored nothing: cancelled, short or refused uploads neither fill nor seal a volume', async () => {
    const dir = await tempDir();
    let s = await openStore(dir, { maxVolumeSize: 8 << 20 });
    const a = blob(10_000, 5);
    await put(s, 'kept', a);
    const size = async () => (await s.stats()).volumes.map((v) => [v.volumeId, v.sizeBytes, v.readOnly]);
    const before = await size();
    // Fifty uploads declaring 4 MiB each (half a volume), cancelled after a chunk or before any byte.
    for (let i = 0; i < 50; i++) {
      const w = await s.beginWrite(`cancelled-${i}`, 1n, 4 << 20);
      if (i % 2 === 0) await w.write(a);
      await w.abort();
    }
    const short = await s.beginWrite('short', 1n, 4 << 20);
    await short.write(a);
    await expect(short.commit()).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(put(s, 'bad-sha', a, { sha: sha256(a.subarray(1)) })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    expect(await size()).toEqual(before);
    // Out of order: an abort behind a live reservation is a hole until the later one goes too.
    const w1 = await s.beginWrite('first', 1n, 1 << 20);
    const w2 = await s.beginWrite('second', 1n, 1 << 20);
    await w1.abort();
    expect(await size()).not.toEqual(before);
    await w2.abort();
    expect(await size()).toEqual(before);
    // A hole behind a committed needle stays (compaction's garbage); the tail keeps the needle.
    const w3 = await s.beginWrite('hole', 1n, 1 << 20);
    const w4 = await s.beginWrite('after', 1n, a.length);
    await w3.abort();
    await w4.write(a);
    await w4.commit();
    expect((await s.stats()).volumes[0]?.efficiency).toBeLessThan(0.5);
    for (let i = 0; i < 50; i += 7)
      await expect(s.openRead(`cancelled-${i}`)).rejects.toBeInstanceOf(NotFoundError);
    await s.close();
    s = await openStore(dir, { maxVolumeSize: 8 << 20 });
    expect(hex(await get(s, 'kept'))).toBe(hex(a));
    expect(hex(await get(s, 'after'))).toBe(hex(a));
    for (const id of ['cancelled-0', 'short', 'hole', 'first']) {
      await expect(s.openRead(id)).rejects.toBeInstanceOf(NotFoundError);
    }
    expect((await s.stats()).needleCount).toBe(2);
    await s.close();
  });

  it('runs 200 concurrent writes, batching their fsyncs, all readable after reopen', async () => {
    const dir = await tempDir();
    let datSyncs = 0;
    let s = await openStore(dir, {
      maxVolumeSize: 64 << 20,
      hooks: {
        onFsync: (f) => {
          if (f === 'dat') datSyncs++;
        },
      },
    });
    await put(s, 'warmup', blob(10));
    datSyncs = 0;
    const n = 200;
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) => put(s, `c-${i}`, blob(1000 + i * 37, i), { chunk: 512 })),
    );
    expect(new Set(results.map((r) => `${r.volumeId}:${r.offset}`)).size).toBe(n);
    expect(datSyncs).toBeGreaterThan(0);
    expect(datSyncs).toBeLessThan(n / 4); // group commit: far fewer fsyncs than writes
    const cs = s.commitStats()[0]!;
    expect(cs.items).toBe(n + 1);
    await s.close();
    s = await openStore(dir, { maxVolumeSize: 64 << 20 });
    for (let i = 0; i < n; i++)
      expect(hex(await get(s, `c-${i}`)), `c-${i}`).toBe(hex(blob(1000 + i * 37, i)));
    expect((await s.stats()).needleCount).toBe(n + 1);
  });

  it('serializes concurrent writers of the same id: one writes, the other is idempotent or rejected', async () => {
    const s = await openStore(await tempDir());
    const a = blob(4000, 1);
    const [r1, r2] = await Promise.all([put(s, 'same', a), put(s, 'same', a)]);
    expect([r1.existed, r2.existed].sort()).toEqual([false, true]);
    expect(r1.offset).toBe(r2.offset);
    const results = await Promise.allSettled([put(s, 'diff', a), put(s, 'diff', blob(4000, 2))]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason).toBeInstanceOf(
      AlreadyExistsError,
    );
    expect((await s.stats()).needleCount).toBe(2);
  });

  it('lists live needles in id order with paging', async () => {
    const s = await openStore(await tempDir(), { maxVolumeSize: 8192 });
    const ids = Array.from({ length: 30 }, (_, i) => `id-${String(i).padStart(3, '0')}`);
    for (const id of [...ids].reverse()) await put(s, id, blob(300, id.length));
    await s.delete('id-005');
    expect((await s.stats()).volumes.length).toBeGreaterThan(1);
    const all: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await s.listNeedles(after, 7);
      if (page.length === 0) break;
      all.push(...page.map((p) => p.blobId));
      after = page[page.length - 1]!.blobId;
      expect(page[0]!.size).toBe(300);
    }
    expect(all).toEqual(ids.filter((i) => i !== 'id-005'));
  });

  it('rejects invalid arguments with actionable messages', async () => {
    const s = await openStore(await tempDir(), { maxVolumeSize: 8192 });
    await expect(s.beginWrite('', 1n, 1)).rejects.toThrow(/empty/);
    await expect(s.beginWrite('ok', 1n, -1)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(s.beginWrite('ok', 1n, 9000)).rejects.toThrow(/exceeds/);
    await expect(fs.stat(path.join(s.dataDir, '1.dat'))).rejects.toThrow();
  });
});

describe('Store with forced hash collisions', () => {
  it('keeps colliding ids apart (keys confirmed against the needle headers), across restart and compaction', async () => {
    const dir = await tempDir();
    const collide = (k: string, out: Uint32Array) => {
      out[0] = k.length % 2; // only two distinct hashes for all ids
      out[1] = 0;
    };
    let s = await openStore(dir, { keyHash: collide });
    const ids = Array.from({ length: 30 }, (_, i) => `col-${i}`);
    for (const [i, id] of ids.entries()) await put(s, id, blob(200 + i, i));
    expect(s.mapInfo().overflow).toBeGreaterThan(20);
    await expect(s.openRead('col-99')).rejects.toBeInstanceOf(NotFoundError); // same hash, absent id
    for (const id of ids.slice(0, 10)) expect(await s.delete(id)).toBe(true);
    await s.close();
    s = await openStore(dir, { keyHash: collide });
    await s.compact(1, true);
    for (const [i, id] of ids.entries()) {
      if (i < 10) await expect(s.openRead(id)).rejects.toBeInstanceOf(NotFoundError);
      else expect(hex(await get(s, id))).toBe(hex(blob(200 + i, i)));
    }
    expect((await s.stat('col-3', { includeDeleted: true })).deleted).toBe(true);
    expect((await s.stats()).needleCount).toBe(20);
    expect((await s.listNeedles(undefined, 100)).map((n) => n.blobId)).toEqual(ids.slice(10).sort());
  });
});

describe('cookies: no existence oracle (issue 13)', () => {
  it('a wrong cookie, a deleted blob asked with a cookie and an unknown id get one NotFound message; 0 skips the check', async () => {
    const s = await openStore(await tempDir());
    await put(s, 'c-live', blob(300, 51), { cookie: 0x1234n });
    await put(s, 'c-gone', blob(300, 52), { cookie: 0x5678n });
    await s.delete('c-gone');
    const said = async (p: Promise<unknown>, id: string) => {
      const e = await p.then(() => undefined).catch((x: unknown) => x);
      expect(e, id).toBeInstanceOf(NotFoundError);
      return (e as Error).message.replace(id, '<id>');
    };
    const answers = [
      await said(s.openRead('c-live', 0x9999n), 'c-live'),
      await said(s.openRead('c-gone', 0x5678n), 'c-gone'),
      await said(s.openRead('c-never', 0x1234n), 'c-never'),
      await said(s.stat('c-live', { cookie: 0x9999n }), 'c-live'),
      await said(s.stat('c-gone', { cookie: 0x5678n }), 'c-gone'),
      await said(s.stat('c-never', { cookie: 0x1234n }), 'c-never'),
    ];
    expect(new Set(answers)).toEqual(new Set(['blob <id> is not on this store']));
    // Internal callers (no cookie) still learn that a blob was deleted; the right cookie reads.
    expect(await said(s.openRead('c-gone'), 'c-gone')).toBe('blob <id> was deleted');
    expect((await s.openRead('c-live', 0x1234n)).size).toBe(300);
    expect((await s.openRead('c-live')).size).toBe(300);
    await s.close();
  });
});

// Review finding (e) of N5: the buffer a needle of at most 128 KiB is assembled in
// was allocated when the write began, so streams that never sent a byte held 128 KiB each.
describe('small-needle buffers', () => {
  it('are not allocated before a write receives its first chunk', async () => {
    const s = await openStore(await tempDir(), { maxVolumeSize: 64 << 20 });
    const n = 100;
    const size = 120_000;
    const before = process.memoryUsage().arrayBuffers;
    const writers = [];
    for (let i = 0; i < n; i++) writers.push(await s.beginWrite(`idle${i}`, 1n, size));
    const grown = process.memoryUsage().arrayBuffers - before;
    // Eager buffers would be n × size = 12 MB here.
    expect(grown).toBeLessThan((n * size) / 4);
    for (const w of writers) await w.abort();
    // A write that does receive data still stores it.
    const data = blob(size, 3);
    await put(s, 'busy', data, { chunk: 10_000 });
    expect(hex(await get(s, 'busy'))).toBe(hex(data));
  });
});
