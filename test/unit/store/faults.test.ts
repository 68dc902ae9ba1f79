import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChecksumError, NotFoundError, ResourceExhaustedError } from '../../../internal/store/errors.js';
import { NEEDLE_FOOTER_SIZE_V2, NEEDLE_HEADER_SIZE } from '../../../internal/store/needle.js';
import { blob, get, hex, openStore, put, tempDir } from './helpers.js';

async function flipByte(file: string, at: number): Promise<void> {
  const h = await fs.open(file, 'r+');
  const b = new Uint8Array(1);
  await h.read(b, 0, 1, at);
  b[0]! ^= 0x40;
  await h.write(b, 0, 1, at);
  await h.close();
}

describe('corruption', () => {
  it('scrub reports a flipped data byte; reading that blob fails with ChecksumError, others read fine', async () => {
    const dir = await tempDir();
    const s = await openStore(dir);
    const placed = new Map<string, { offset: number }>();
    for (let i = 0; i < 5; i++) placed.set(`p${i}`, await put(s, `p${i}`, blob(20_000, i)));
    expect((await s.scrub()).corrupt).toEqual([]);
    const victim = placed.get('p2')!;
    await flipByte(path.join(dir, '1.dat'), victim.offset + NEEDLE_HEADER_SIZE + 2 + 15_000);
    const rep = await s.scrub();
    expect(rep.needlesChecked).toBe(5);
    expect(rep.bytesChecked).toBeGreaterThan(100_000);
    expect(rep.corrupt).toHaveLength(1);
    expect(rep.corrupt[0]).toMatchObject({ blobId: 'p2', volumeId: 1, offset: victim.offset });
    expect(rep.corrupt[0]!.reason).toMatch(/checksum/);
    const err = await get(s, 'p2').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ChecksumError);
    expect((err as ChecksumError).code).toBe('DATA_LOSS');
    // a range that does not include the flipped byte still fails: the whole needle is verified
    await expect(get(s, 'p2', undefined, 0, 10)).rejects.toBeInstanceOf(ChecksumError);
    for (const i of [0, 1, 3, 4]) expect(hex(await get(s, `p${i}`))).toBe(hex(blob(20_000, i)));
    // the stream never completes with corrupt data: no chunk covering the end is emitted
    const r = await s.openRead('p2');
    let bytes = 0;
    await expect(
      (async () => {
        for await (const c of r.stream(0, undefined, 4096)) bytes += c.length;
      })(),
    ).rejects.toBeInstanceOf(ChecksumError);
    expect(bytes).toBeLessThan(20_000);
  });

  it('scrub reports a flipped header byte with the blob id from the index', async () => {
    const dir = await tempDir();
    const s = await openStore(dir);
    const a = await put(s, 'hdr', blob(100, 1));
    await put(s, 'ok', blob(100, 2));
    await flipByte(path.join(dir, '1.dat'), a.offset + 20);
    const rep = await s.scrub(1);
    expect(rep.corrupt.map((c) => c.blobId)).toEqual(['hdr']);
    expect(rep.corrupt[0]!.reason).toMatch(/header/);
    await expect(s.openRead('hdr')).rejects.toBeInstanceOf(ChecksumError);
    expect(hex(await get(s, 'ok'))).toBe(hex(blob(100, 2)));
  });
});

describe('capacity', () => {
  it('rolls over to new volumes at maxVolumeSize and seals full ones', async () => {
    const dir = await tempDir();
    let s = await openStore(dir, { maxVolumeSize: 16384 });
    for (let i = 0; i < 20; i++) await put(s, `r${i}`, blob(3000, i));
    const st = await s.stats();
    expect(st.volumes.length).toBeGreaterThanOrEqual(4);
    for (const v of st.volumes) expect(v.sizeBytes).toBeLessThanOrEqual(16384);
    expect(st.volumes.slice(0, -1).every((v) => v.readOnly)).toBe(true);
    await s.close();
    s = await openStore(dir, { maxVolumeSize: 16384 });
    for (let i = 0; i < 20; i++) expect(hex(await get(s, `r${i}`))).toBe(hex(blob(3000, i)));
    expect((await s.stats()).volumes.length).toBe(st.volumes.length);
  });

  it('answers ResourceExhausted when volumes are full and the volume limit is reached; reads continue', async () => {
    const dir = await tempDir();
    const s = await openStore(dir, { maxVolumeSize: 8192, maxVolumes: 2 });
    await put(s, 'a', blob(3450, 1));
    await put(s, 'b', blob(3450, 2));
    await put(s, 'c', blob(3450, 3));
    await put(s, 'd', blob(3450, 4));
    await expect(put(s, 'e', blob(3450, 5))).rejects.toBeInstanceOf(ResourceExhaustedError);
    expect((await s.stats()).volumes.map((v) => v.volumeId)).toEqual([1, 2]);
    for (const [id, i] of [
      ['a', 1],
      ['b', 2],
      ['c', 3],
      ['d', 4],
    ] as const) {
      expect(hex(await get(s, id))).toBe(hex(blob(3450, i)));
    }
    // small blobs still fit in the remaining space; the big one still does not
    await put(s, 'small', blob(500, 6));
    expect(hex(await get(s, 'small'))).toBe(hex(blob(500, 6)));
    await expect(put(s, 'e', blob(3450, 5))).rejects.toBeInstanceOf(ResourceExhaustedError);
    expect(hex(await get(s, 'a'))).toBe(hex(blob(3450, 1)));
  });

  it('still deletes on a full store, so compaction can give the space back', async () => {
    const dir = await tempDir();
    let s = await openStore(dir, { maxVolumeSize: 8192, maxVolumes: 2 });
    for (const [id, i] of [
      ['a', 1],
      ['b', 2],
      ['c', 3],
      ['d', 4],
    ] as const)
      await put(s, id, blob(3500, i));
    await put(s, 'small', blob(500, 6));
    await expect(put(s, 'e', blob(3500, 5))).rejects.toBeInstanceOf(ResourceExhaustedError);
    // Every volume is full and the limit is reached: the tombstones go to the
    // deleted needles' own volumes.
    expect(await s.delete('a')).toBe(true);
    expect(await s.delete('b')).toBe(true);
    await expect(s.openRead('a')).rejects.toBeInstanceOf(NotFoundError);
    await s.compact(undefined, true);
    await put(s, 'e', blob(3500, 5));
    expect(hex(await get(s, 'e'))).toBe(hex(blob(3500, 5)));
    await s.close();
    s = await openStore(dir, { maxVolumeSize: 8192, maxVolumes: 2 });
    await expect(s.openRead('a')).rejects.toBeInstanceOf(NotFoundError);
    await expect(s.openRead('b')).rejects.toBeInstanceOf(NotFoundError);
    for (const [id, i] of [
      ['c', 3],
      ['d', 4],
      ['e', 5],
    ] as const)
      expect(hex(await get(s, id))).toBe(hex(blob(3500, i)));
    await s.close();
  });

  it('maps ENOSPC during data, footer/commit and index writes to ResourceExhausted without corruption', async () => {
    const dir = await tempDir();
    let fail: ((file: string, pos: number, len: number) => boolean) | undefined;
    const opts = {
      hooks: {
        beforeWrite: (file: 'dat' | 'idx', _v: number, pos: number, len: number) => {
          if (fail?.(file, pos, len))
            throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
        },
      },
    };
    let s = await openStore(dir, opts);
    await put(s, 'base', blob(5000, 1));
    // 1) a data chunk write of a needle above 128 KiB (written chunk by chunk) fails
    fail = (f, _p, len) => f === 'dat' && len === 50_000;
    await expect(put(s, 'x1', blob(200_000, 2), { chunk: 50_000 })).rejects.toBeInstanceOf(
      ResourceExhaustedError,
    );
    // 2) the footer write of such a needle fails
    fail = (f, _p, len) => f === 'dat' && len >= NEEDLE_FOOTER_SIZE_V2 && len < NEEDLE_FOOTER_SIZE_V2 + 8;
    await expect(put(s, 'x2', blob(150_000, 3), { chunk: 150_000 })).rejects.toBeInstanceOf(
      ResourceExhaustedError,
    );
    // 3) the index append fails (after the volume fsync)
    fail = (f) => f === 'idx';
    await expect(put(s, 'x3', blob(5000, 4))).rejects.toBeInstanceOf(ResourceExhaustedError);
    await expect(s.delete('base')).rejects.toBeInstanceOf(ResourceExhaustedError);
    // 4) the one write of a needle of at most 128 KiB (data and footer, at commit) fails
    fail = (f, _p, len) => f === 'dat' && len >= 5000;
    await expect(put(s, 'x4', blob(5000, 6), { chunk: 1000 })).rejects.toBeInstanceOf(ResourceExhaustedError);
    fail = undefined;
    for (const id of ['x1', 'x2', 'x3', 'x4'])
      await expect(s.openRead(id)).rejects.toBeInstanceOf(NotFoundError);
    expect(hex(await get(s, 'base'))).toBe(hex(blob(5000, 1)));
    // space is back: everything works, ids are reusable, restart is clean
    await put(s, 'x3', blob(5000, 4));
    await put(s, 'x1', blob(10, 5));
    await s.close();
    s = await openStore(dir, opts);
    expect(hex(await get(s, 'x3'))).toBe(hex(blob(5000, 4)));
    expect(hex(await get(s, 'x1'))).toBe(hex(blob(10, 5)));
    expect(hex(await get(s, 'base'))).toBe(hex(blob(5000, 1)));
    for (const id of ['x2', 'x4']) await expect(s.openRead(id)).rejects.toBeInstanceOf(NotFoundError);
    expect((await s.scrub()).corrupt).toEqual([]);
    expect((await s.stats()).needleCount).toBe(3);
  });

  // Review finding (c) of N5: a needle of at most 128 KiB is written in one write at
  // commit; an ENOSPC there kept the write's space reserved until compaction.
  it('gives the space back when the one write of a small needle fails with ENOSPC', async () => {
    const dir = await tempDir();
    let full = false;
    const s = await openStore(dir, {
      hooks: {
        beforeWrite: (f, _v, _pos, len) => {
          if (full && f === 'dat' && len >= 5000)
            throw Object.assign(new Error('ENOSPC'), { code: 'ENOSPC' });
        },
      },
    });
    const a = await put(s, 'a', blob(5000, 1));
    const b = await put(s, 'b', blob(5000, 2));
    const stride = b.offset - a.offset;
    full = true;
    await expect(put(s, 'c', blob(5000, 3), { chunk: 1000 })).rejects.toBeInstanceOf(ResourceExhaustedError);
    full = false;
    // The next needle goes where the failed one was: its reservation was given back.
    const d = await put(s, 'd', blob(5000, 4));
    expect(d.offset).toBe(b.offset + stride);
    await expect(s.openRead('c')).rejects.toBeInstanceOf(NotFoundError);
    expect(hex(await get(s, 'd'))).toBe(hex(blob(5000, 4)));
    expect((await s.scrub()).corrupt).toEqual([]);
    await s.close();
  });

  it('ENOSPC while creating a volume → ResourceExhausted; existing data readable', async () => {
    const dir = await tempDir();
    let full = false;
    const s = await openStore(dir, {
      maxVolumeSize: 8192,
      hooks: {
        beforeWrite: (_f, _v, pos) => {
          if (full && pos === 0) throw Object.assign(new Error('ENOSPC'), { code: 'ENOSPC' });
        },
      },
    });
    await put(s, 'a', blob(7000, 1));
    full = true;
    await expect(put(s, 'b', blob(7000, 2))).rejects.toBeInstanceOf(ResourceExhaustedError);
    expect(hex(await get(s, 'a'))).toBe(hex(blob(7000, 1)));
    expect((await fs.readdir(dir)).sort()).toEqual(['1.dat', '1.idx']);
    full = false;
    await put(s, 'b', blob(7000, 2));
    expect(hex(await get(s, 'b'))).toBe(hex(blob(7000, 2)));
  });
});
