import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChecksumError } from '../../../internal/store/errors.js';
import { keepStampStep } from '../../../internal/store/store-write.js';
import { flipBytesOnDisk } from '../../faults/harness.js';
import { blob, get, hex, openStore, put, tempDir } from './helpers.js';

/** Total bytes of the store's volume files. */
async function datBytes(dir: string): Promise<number> {
  let n = 0;
  for (const f of await fs.readdir(dir)) if (f.endsWith('.dat')) n += (await fs.stat(path.join(dir, f))).size;
  return n;
}

/** Flips the first byte of the LAST copy of `key` in the volume files (the newest record's header). */
async function flipLastKey(dir: string, key: string): Promise<void> {
  for (const f of await fs.readdir(dir)) {
    if (!f.endsWith('.dat')) continue;
    const buf = await fs.readFile(path.join(dir, f));
    const at = buf.lastIndexOf(Buffer.from(key, 'latin1'));
    if (at < 0) continue;
    buf[at] = (buf[at] ?? 0) ^ 0xff;
    await fs.writeFile(path.join(dir, f), buf);
    return;
  }
  throw new Error(`${key} not in ${dir}`);
}

describe('keepStampStep', () => {
  it('copies over older, keeps newer and equal tombstones, verifies equal live needles', () => {
    expect(keepStampStep(1_000, 2_000, false)).toBe('copy');
    expect(keepStampStep(1_000, 2_000, true)).toBe('copy');
    expect(keepStampStep(3_000, 2_000, false)).toBe('keep');
    expect(keepStampStep(3_000, 2_000, true)).toBe('keep');
    expect(keepStampStep(2_000, 2_000, true)).toBe('keep');
    expect(keepStampStep(2_000, 2_000, false)).toBe('verify');
  });
});

describe('keepStamp copy over an equal-stamp needle', () => {
  it('replaces a damaged needle 1 ms above it; the good copy survives a restart', async () => {
    const dir = await tempDir();
    let s = await openStore(dir);
    const id = 'repair-equal-stamp-0001';
    const data = blob(5_000, 7);
    await put(s, id, data, { stamp: 5_000, cookie: 9n });
    await flipBytesOnDisk(dir, id);
    await expect(get(s, id)).rejects.toBeInstanceOf(ChecksumError);
    const r = await put(s, id, data, { stamp: 5_000, cookie: 9n, keepStamp: true });
    expect(r).toMatchObject({ kept: false, existed: false, writtenAtMs: 5_001, cookie: 9n });
    expect(hex(await get(s, id))).toBe(hex(data));
    await s.close();
    s = await openStore(dir);
    expect(hex(await get(s, id))).toBe(hex(data));
    expect(await s.stat(id)).toMatchObject({ writtenAtMs: 5_001, cookie: 9n, size: data.length });
    // The repaired copy is now newer than the source's: another keepStamp copy
    // at the old stamp is kept (the source converges on this one instead).
    const before = await datBytes(dir);
    expect((await put(s, id, data, { stamp: 5_000, keepStamp: true })).kept).toBe(true);
    expect(await datBytes(dir)).toBe(before);
  });

  it('replaces a needle whose header is damaged, but never a damaged tombstone', async () => {
    const dir = await tempDir();
    let s = await openStore(dir);
    const id = 'repair-header-0001';
    const data = blob(3_000, 9);
    await put(s, id, data, { stamp: 7_000, cookie: 4n, contentType: 'image/jpeg-original-file' });
    await flipBytesOnDisk(dir, id); // key + 16: inside the content type
    await expect(s.stat(id)).rejects.toBeInstanceOf(ChecksumError);
    // An older copy never replaces it.
    await expect(put(s, id, data, { stamp: 6_000, keepStamp: true })).rejects.toBeInstanceOf(ChecksumError);
    const r = await put(s, id, data, {
      stamp: 7_000,
      cookie: 4n,
      keepStamp: true,
      contentType: 'image/jpeg',
    });
    expect(r).toMatchObject({ kept: false, writtenAtMs: 7_001, cookie: 4n });
    await s.close();
    s = await openStore(dir);
    expect(hex(await get(s, id))).toBe(hex(data));
    expect((await s.stat(id)).writtenAtMs).toBe(7_001);

    const t = 'repair-header-tomb-0001';
    await put(s, t, blob(10, 1), { stamp: 1_000 });
    expect(await s.delete(t, { stamp: 2_000 })).toBe(true);
    await flipLastKey(dir, t); // the tombstone's header
    await expect(put(s, t, blob(10, 1), { stamp: 2_000, keepStamp: true })).rejects.toBeInstanceOf(
      ChecksumError,
    );
  });

  it('keeps an intact needle without writing anything', async () => {
    const dir = await tempDir();
    const s = await openStore(dir);
    const id = 'intact-equal-stamp-0001';
    const data = blob(5_000, 8);
    await put(s, id, data, { stamp: 6_000, cookie: 3n });
    const before = await datBytes(dir);
    const r = await put(s, id, data, { stamp: 6_000, cookie: 3n, keepStamp: true });
    expect(r).toMatchObject({ kept: true, existed: true, writtenAtMs: 6_000, cookie: 3n });
    expect(await datBytes(dir)).toBe(before);
    expect(hex(await get(s, id))).toBe(hex(data));
  });

  it('keeps an equal-stamp tombstone', async () => {
    const s = await openStore(await tempDir());
    await put(s, 'tomb-equal-0001', blob(100, 1), { stamp: 1_000 });
    expect(await s.delete('tomb-equal-0001', { stamp: 2_000 })).toBe(true);
    const r = await put(s, 'tomb-equal-0001', blob(100, 1), { stamp: 2_000, keepStamp: true });
    expect(r.kept).toBe(true);
    await expect(get(s, 'tomb-equal-0001')).rejects.toThrow(/deleted/);
  });
});
