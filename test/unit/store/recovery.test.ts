import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { NotFoundError } from '../../../internal/store/errors.js';
import { INDEX_HEADER_SIZE } from '../../../internal/store/index-file.js';
import { FLAG_V2, needleLength } from '../../../internal/store/needle.js';
import { blob, get, hex, openStore, put, tempDir } from './helpers.js';

async function copyDir(from: string, to: string): Promise<void> {
  await fs.cp(from, to, { recursive: true });
}

describe('recovery', () => {
  it('cuts a torn tail at every cut point of the last needle, keeping earlier needles', async () => {
    const base = await tempDir();
    const s = await openStore(base);
    await put(s, 'first', blob(500, 1));
    await put(s, 'second', blob(300, 2));
    const last = await put(s, 'torn', blob(200, 3));
    await s.close();
    // Simulate the torn append: the index never got the record, the volume holds part of the needle.
    const datPath = path.join(base, '1.dat');
    const idxPath = path.join(base, '1.idx');
    const idxFull = (await fs.stat(idxPath)).size;
    const lastRecordLen = 40 + 'torn'.length;
    const len = needleLength(4, 200, FLAG_V2);
    // cut points: inside header, key, data, footer, padding (every byte) and "complete"
    for (let cut = 0; cut <= len; cut++) {
      const dir = `${base}-cut${cut}`;
      await copyDir(base, dir);
      await fs.truncate(path.join(dir, '1.idx'), idxFull - lastRecordLen);
      await fs.truncate(path.join(dir, '1.dat'), last.offset + cut);
      const r = await openStore(dir);
      expect(hex(await get(r, 'first')), `cut ${cut}`).toBe(hex(blob(500, 1)));
      expect(hex(await get(r, 'second')), `cut ${cut}`).toBe(hex(blob(300, 2)));
      if (cut === len) {
        // the whole needle is there: recovered from the volume scan
        expect(hex(await get(r, 'torn'))).toBe(hex(blob(200, 3)));
      } else {
        await expect(r.openRead('torn'), `cut ${cut}`).rejects.toBeInstanceOf(NotFoundError);
        expect((await fs.stat(path.join(dir, '1.dat'))).size).toBe(last.offset); // torn bytes cut
      }
      // the store keeps working after recovery
      await put(r, 'after', blob(100, 4));
      await r.close();
      const r2 = await openStore(dir);
      expect(hex(await get(r2, 'after'))).toBe(hex(blob(100, 4)));
      expect((await r2.stats()).needleCount).toBe(cut === len ? 4 : 3);
      await r2.close();
      await fs.rm(dir, { recursive: true });
    }
    expect((await fs.stat(datPath)).size).toBe(last.offset + len);
  }, 300_000); // every cut point: ~600 store opens, slow on a loaded 2-core box

  it('cuts a torn index record at every cut point and recovers the needle from the volume', async () => {
    const base = await tempDir();
    const s = await openStore(base);
    for (let i = 0; i < 5; i++) await put(s, `n${i}`, blob(100 + i, i));
    await s.close();
    const idxSize = await fs.stat(path.join(base, '1.idx')).then((st) => st.size);
    for (let cut = INDEX_HEADER_SIZE; cut < idxSize; cut += 3) {
      const dir = `${base}-i${cut}`;
      await copyDir(base, dir);
      await fs.truncate(path.join(dir, '1.idx'), cut);
      const r = await openStore(dir);
      for (let i = 0; i < 5; i++)
        expect(hex(await get(r, `n${i}`)), `cut ${cut} n${i}`).toBe(hex(blob(100 + i, i)));
      await r.close();
      await fs.rm(dir, { recursive: true });
    }
  }, 300_000);

  it('handles an index behind the volume (records lost) and ahead of it (volume shorter)', async () => {
    const base = await tempDir();
    const s = await openStore(base);
    for (let i = 0; i < 6; i++) await put(s, `k${i}`, blob(1000, i));
    await s.delete('k2');
    const r5 = await s.openRead('k5');
    await s.close();

    // behind: no records at all (only the header) → the tail scan recovers all, tombstone included
    const behind = `${base}-behind`;
    await copyDir(base, behind);
    await fs.truncate(path.join(behind, '1.idx'), INDEX_HEADER_SIZE);
    let r = await openStore(behind);
    for (const i of [0, 1, 3, 4, 5]) expect(hex(await get(r, `k${i}`))).toBe(hex(blob(1000, i)));
    await expect(r.openRead('k2')).rejects.toBeInstanceOf(NotFoundError);
    await r.close();

    // ahead: the volume lost its last needles (tombstone + k5 part) but the index still lists them
    const ahead = `${base}-ahead`;
    await copyDir(base, ahead);
    await fs.truncate(path.join(ahead, '1.dat'), r5.offset + 100);
    r = await openStore(ahead);
    for (const i of [0, 1, 3, 4]) expect(hex(await get(r, `k${i}`))).toBe(hex(blob(1000, i)));
    await expect(r.openRead('k5')).rejects.toBeInstanceOf(NotFoundError);
    // index rebuilt: consistent after another restart, and writable
    await put(r, 'new', blob(10, 1));
    await r.close();
    r = await openStore(ahead);
    expect(hex(await get(r, 'new'))).toBe(hex(blob(10, 1)));
    expect(hex(await get(r, 'k4'))).toBe(hex(blob(1000, 4)));
    await r.close();

    // index missing or from another volume generation → rebuilt from the volume
    const missing = `${base}-missing`;
    await copyDir(base, missing);
    await fs.unlink(path.join(missing, '1.idx'));
    r = await openStore(missing);
    for (const i of [0, 1, 3, 4, 5]) expect(hex(await get(r, `k${i}`))).toBe(hex(blob(1000, i)));
    await expect(r.openRead('k2')).rejects.toBeInstanceOf(NotFoundError);
    await r.close();
  });

  it('skips an aborted needle in the middle of the tail and recovers the complete ones after it', async () => {
    const base = await tempDir();
    const s = await openStore(base);
    await put(s, 'before', blob(100, 1));
    const w = await s.beginWrite('aborted', 1n, 1000);
    await w.write(blob(500, 2));
    const after = put(s, 'after', blob(100, 3)); // reserved after the aborted needle
    await after;
    await w.abort();
    await s.close();
    const dir = `${base}-x`;
    await copyDir(base, dir);
    await fs.truncate(path.join(dir, '1.idx'), INDEX_HEADER_SIZE); // forget every record
    const r = await openStore(dir);
    expect(hex(await get(r, 'before'))).toBe(hex(blob(100, 1)));
    expect(hex(await get(r, 'after'))).toBe(hex(blob(100, 3)));
    await expect(r.openRead('aborted')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('discards leftovers of an interrupted volume creation', async () => {
    const dir = await tempDir();
    let s = await openStore(dir);
    await put(s, 'a', blob(10, 1));
    await s.close();
    await fs.writeFile(path.join(dir, '2.dat.new'), 'partial');
    await fs.writeFile(path.join(dir, '3.idx'), 'orphan');
    s = await openStore(dir);
    expect(hex(await get(s, 'a'))).toBe(hex(blob(10, 1)));
    expect((await fs.readdir(dir)).sort()).toEqual(['1.dat', '1.idx']);
  });

  it('rebuilds and tail-recovers v2 needles with content type and file name (their length comes from the header)', async () => {
    const dir = await tempDir();
    let s = await openStore(dir);
    await put(s, 'm1', blob(3000, 1), { contentType: 'image/jpeg', fileName: 'ü.jpg' });
    await put(s, 'm2', blob(10, 2), { contentType: 'a'.repeat(255), fileName: 'b'.repeat(255) });
    const idxBeforeLast = await fs.stat(path.join(dir, '1.idx')).then((st) => st.size);
    await put(s, 'm3', blob(500, 3), { fileName: 'last' });
    await s.close();
    const check = async (r: typeof s) => {
      expect((await r.stat('m1')).fileName).toBe('ü.jpg');
      expect((await r.stat('m2')).contentType).toBe('a'.repeat(255));
      expect(hex(await get(r, 'm2'))).toBe(hex(blob(10, 2)));
      expect(hex(await get(r, 'm3'))).toBe(hex(blob(500, 3)));
      expect((await r.scrub()).corrupt).toEqual([]);
    };
    // The last record lost: the tail scan recovers it.
    await fs.truncate(path.join(dir, '1.idx'), idxBeforeLast);
    s = await openStore(dir);
    await check(s);
    await s.close();
    // No index at all: rebuilt from the volume.
    await fs.rm(path.join(dir, '1.idx'));
    s = await openStore(dir);
    await check(s);
    await s.close();
    s = await openStore(dir);
    await check(s);
  });
});
