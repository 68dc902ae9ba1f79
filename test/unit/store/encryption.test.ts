import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { type Keyring, newKekLine, parseKeks } from '../../../internal/store/crypto/kek.js';
import { KeyringError } from '../../../internal/store/crypto/volume-keys.js';
import {
  ChecksumError,
  FailedPreconditionError,
  NotFoundError,
  ResourceExhaustedError,
} from '../../../internal/store/errors.js';
import {
  dataOffset,
  decodeHeader,
  FLAG_ENCRYPTED,
  FLAG_V2,
  MAX_HEADER_LENGTH,
  needleLength,
} from '../../../internal/store/needle.js';
import type { Store } from '../../../internal/store/store.js';
import { get, openStore, put, sha256, tempDir } from './helpers.js';

/** A distinctive, non-repeating-looking but recognisable multi-KiB pattern. */
function pattern(n: number, tag: string): Buffer {
  const unit = Buffer.from(`<<haystack-plaintext-${tag}-0123456789abcdef>>`);
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i += unit.length) unit.copy(out, i);
  return out;
}

/** Every 64-byte window of `data` that occurs in any file of `dir` (should be none). */
async function plaintextIn(dir: string, data: Buffer): Promise<string[]> {
  const hits: string[] = [];
  const probe = data.subarray(0, 64);
  for (const name of await fs.readdir(dir)) {
    const file = path.join(dir, name);
    if (!(await fs.stat(file)).isFile()) continue;
    if ((await fs.readFile(file)).includes(probe)) hits.push(name);
  }
  return hits;
}

const ring = (...lines: string[]) => parseKeks(lines.join('\n'));
const k1 = newKekLine('k1');
const k2 = newKekLine('k2');

async function open(dir: string, keyring?: Keyring): Promise<Store> {
  return openStore(dir, { maxVolumeSize: 1 << 20, ...(keyring ? { keyring } : {}) });
}

async function firstHeaderFlags(dir: string, offset = 64) {
  const h = await fs.open(path.join(dir, '1.dat'), 'r');
  try {
    const buf = new Uint8Array(MAX_HEADER_LENGTH);
    await h.read(buf, 0, buf.length, offset);
    return decodeHeader(buf);
  } finally {
    await h.close();
  }
}

describe('encryption at rest (store engine)', () => {
  it('stores no plaintext, reads byte-identical, and keeps it across restart, compaction and KEK rotation', async () => {
    const dir = await tempDir();
    const blobs = new Map<string, Buffer>();
    for (let i = 0; i < 6; i++) blobs.set(`b${i}`, pattern(3000 + i * 20_000, `b${i}`));
    let s = await open(dir, ring(k1));
    for (const [id, data] of blobs) await put(s, id, data, { contentType: 'image/jpeg' });
    await put(s, 'gone', pattern(5000, 'gone'));
    await s.delete('gone');
    const checkAll = async (st: Store) => {
      for (const [id, data] of blobs) {
        expect(Buffer.from(await get(st, id)).equals(data), id).toBe(true);
        const f = await st.stat(id);
        expect(Buffer.from(f.sha256!).equals(sha256(data))).toBe(true);
      }
    };
    await checkAll(s);
    // A range read decrypts in step too.
    expect(
      Buffer.from(await get(s, 'b3', undefined, 12_345, 20_000)).equals(
        blobs.get('b3')!.subarray(12_345, 32_345),
      ),
    ).toBe(true);
    for (const data of blobs.values()) expect(await plaintextIn(dir, data)).toEqual([]);
    expect((await firstHeaderFlags(dir)).flags & FLAG_ENCRYPTED).toBe(FLAG_ENCRYPTED);
    expect((await s.scrub()).corrupt).toEqual([]);

    // Restart.
    await s.close();
    s = await open(dir, ring(k1));
    await checkAll(s);

    // Compaction re-encrypts under a new key slot; the keys file keeps only that slot.
    const before = JSON.parse(await fs.readFile(path.join(dir, '1.keys'), 'utf8'));
    expect(before.slots.map((x: { slot: number }) => x.slot)).toEqual([1]);
    await s.compact(1, true);
    await checkAll(s);
    const after = JSON.parse(await fs.readFile(path.join(dir, '1.keys'), 'utf8'));
    expect(after.current).toBe(2);
    expect(after.slots.map((x: { slot: number }) => x.slot)).toEqual([2]);
    expect((await firstHeaderFlags(dir)).keySlot).toBe(2);
    for (const data of blobs.values()) expect(await plaintextIn(dir, data)).toEqual([]);
    expect((await s.scrub()).corrupt).toEqual([]);
    await expect(get(s, 'gone')).rejects.toThrow(/deleted/);

    // KEK rotation: k2 appended (newest) → DEKs re-wrapped under k2 at startup.
    await s.close();
    s = await open(dir, ring(k1, k2));
    expect(JSON.parse(await fs.readFile(path.join(dir, '1.keys'), 'utf8')).slots[0].kek).toBe('k2');
    await checkAll(s);
    // k1 removed: everything still reads.
    await s.close();
    s = await open(dir, ring(k2));
    await checkAll(s);
    await put(s, 'after-rotation', pattern(70_000, 'after'));
    expect(Buffer.from(await get(s, 'after-rotation')).equals(pattern(70_000, 'after'))).toBe(true);
    await s.close();
  });

  it('sealed needles in one chunk, a few, many tiny ones (past the pieces limit) or streamed: hooks see the header and one write of data and footer (streamed: every chunk), reads are byte-identical', async () => {
    const dir = await tempDir();
    let seen: Array<[number, number]> = [];
    let fail: ((pos: number, len: number) => boolean) | undefined;
    const hooks = {
      beforeWrite: (file: 'dat' | 'idx', _v: number, pos: number, len: number) => {
        if (file !== 'dat') return;
        if (fail?.(pos, len))
          throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
        seen.push([pos, len]);
      },
    };
    const opts = { maxVolumeSize: 1 << 22, keyring: ring(k1), hooks };
    let s = await openStore(dir, opts);
    await put(s, 'first', pattern(100, 'first')); // creates the volume (its superblock write)
    // [id, size, chunk]: 64 KiB whole and in 9 pieces (ciphertext kept and written with one pwritev);
    // 20,000 bytes in 200 pieces (past MAX_SEALED_PIECES: assembled in a tail); 300,000 streamed.
    const cases = [
      ['one', 65_536, 65_536],
      ['few', 65_536, 7919],
      ['tiny', 20_000, 100],
      ['streamed', 300_000, 65_536],
    ] as const;
    for (const [id, n, chunk] of cases) {
      seen = [];
      const w = await put(s, id, pattern(n, id), { chunk });
      // Header, then data and footer in one write (a needle of at most 128 KiB) or every chunk
      // and the footer (streamed): back to back from the needle's offset.
      expect(seen.length, id).toBe(id === 'streamed' ? 2 + Math.ceil(n / chunk) : 2);
      expect(seen[0]![0], id).toBe(w.offset);
      for (let i = 1; i < seen.length; i++) expect(seen[i]![0], id).toBe(seen[i - 1]![0] + seen[i - 1]![1]);
      expect(Buffer.from(await get(s, id)).equals(pattern(n, id)), id).toBe(true);
    }
    // A failed write of a kept-pieces needle's data and footer stores nothing and leaves the store usable.
    const tail = needleLength(7, 1000, FLAG_V2 | FLAG_ENCRYPTED) - dataOffset(7); // 1000 + 76 + padding
    fail = (_pos, len) => len === tail;
    await expect(put(s, 'nospace', pattern(1000, 'nospace'), { chunk: 500 })).rejects.toBeInstanceOf(
      ResourceExhaustedError,
    );
    fail = undefined;
    await expect(s.openRead('nospace')).rejects.toBeInstanceOf(NotFoundError);
    await put(s, 'nospace', pattern(1000, 'nospace'), { chunk: 500 });
    expect(Buffer.from(await get(s, 'nospace')).equals(pattern(1000, 'nospace'))).toBe(true);
    for (const [id, n] of cases) expect(await plaintextIn(dir, pattern(n, id)), id).toEqual([]);
    expect((await s.scrub()).corrupt).toEqual([]);
    await s.close();
    s = await openStore(dir, opts);
    for (const [id, n] of cases) expect(Buffer.from(await get(s, id)).equals(pattern(n, id)), id).toBe(true);
    await s.close();
  });

  it('refuses to open encrypted volumes without the KEK, or with a wrong one, naming KEK_FILE', async () => {
    const dir = await tempDir();
    const s = await open(dir, ring(k1));
    await put(s, 'x', pattern(4096, 'x'));
    await s.close();
    await expect(open(dir)).rejects.toThrow(KeyringError);
    await expect(open(dir)).rejects.toThrow(/KEK_FILE/);
    await expect(open(dir, ring(k2))).rejects.toThrow(/KEK "k1", which KEK_FILE does not hold/);
    // Same id, other key material.
    await expect(open(dir, ring(newKekLine('k1')))).rejects.toThrow(
      /does not unwrap with KEK "k1" from KEK_FILE/,
    );
    const again = await open(dir, ring(k1));
    expect(Buffer.from(await get(again, 'x')).equals(pattern(4096, 'x'))).toBe(true);
  });

  it('detects a flipped ciphertext byte on read (DATA_LOSS) and in scrub, small and streamed needles', async () => {
    const dir = await tempDir();
    const s = await open(dir, ring(k1));
    const small = pattern(10_000, 'small');
    const large = pattern(400_000, 'large'); // over the one-read size: streamed
    const a = await put(s, 'small', small);
    const b = await put(s, 'large', large);
    const h = await fs.open(path.join(dir, '1.dat'), 'r+');
    for (const [w, at] of [
      [a, 5000],
      [b, 300_000],
    ] as const) {
      const hdr = await firstHeaderFlags(dir, w.offset);
      const pos = w.offset + 40 + hdr.key.length + (hdr.metaLen ?? 0) + at;
      const one = Buffer.alloc(1);
      await h.read(one, 0, 1, pos);
      one[0]! ^= 0x01;
      await h.write(one, 0, 1, pos);
    }
    await h.close();
    for (const id of ['small', 'large']) {
      const err = await get(s, id).catch((e: unknown) => e);
      expect(err, id).toBeInstanceOf(ChecksumError);
      expect((err as ChecksumError).code).toBe('DATA_LOSS');
    }
    const report = await s.scrub();
    expect(report.corrupt.map((c) => c.blobId).sort()).toEqual(['large', 'small']);
    // Compaction does not launder it: the copy stays corrupt, scrub still reports it.
    await s.compact(1, true);
    expect((await s.scrub()).corrupt.map((c) => c.blobId).sort()).toEqual(['large', 'small']);
    await expect(get(s, 'small')).rejects.toBeInstanceOf(ChecksumError);
    // The slot of the raw-copied needles is kept.
    const keys = JSON.parse(await fs.readFile(path.join(dir, '1.keys'), 'utf8'));
    expect(keys.slots.map((x: { slot: number }) => x.slot)).toEqual([1, 2]);
  });

  it('reads an existing plaintext volume with a KEK, encrypts new writes, and compaction encrypts the old ones', async () => {
    const dir = await tempDir();
    const old = pattern(30_000, 'old');
    let s = await open(dir);
    await put(s, 'old', old, { contentType: 'text/plain', fileName: 'old.txt' });
    await s.close();
    expect(await plaintextIn(dir, old)).toEqual(['1.dat']);
    s = await open(dir, ring(k1));
    expect(Buffer.from(await get(s, 'old')).equals(old)).toBe(true);
    const fresh = pattern(30_000, 'fresh');
    await put(s, 'fresh', fresh);
    expect(await plaintextIn(dir, fresh)).toEqual([]);
    await s.compact(1, true);
    expect(await plaintextIn(dir, old)).toEqual([]);
    for (const [id, data] of [
      ['old', old],
      ['fresh', fresh],
    ] as const) {
      expect(Buffer.from(await get(s, id)).equals(data)).toBe(true);
    }
    const f = await s.stat('old');
    expect(f.contentType).toBe('text/plain');
    expect(f.fileName).toBe('old.txt');
    expect((await s.scrub()).corrupt).toEqual([]);
    await s.close();
    s = await open(dir, ring(k1));
    expect(Buffer.from(await get(s, 'old')).equals(old)).toBe(true);
  });

  it('idempotent retries and keep_stamp copies compare against the decrypted content', async () => {
    const dir = await tempDir();
    const s = await open(dir, ring(k1));
    const data = pattern(50_000, 'idem');
    const first = await put(s, 'idem', data, { cookie: 5n });
    const again = await put(s, 'idem', data, { cookie: 9n });
    expect(again.existed).toBe(true);
    expect(again.cookie).toBe(5n);
    expect(again.crc32c).toBe(first.crc32c);
    await expect(put(s, 'idem', pattern(50_000, 'other'))).rejects.toThrow(/different content/);
    const kept = await put(s, 'idem', data, { stamp: first.writtenAtMs, keepStamp: true });
    expect(kept.kept).toBe(true);
    // An empty blob is a tag over no ciphertext.
    await put(s, 'empty', new Uint8Array(0));
    expect((await get(s, 'empty')).length).toBe(0);
    await s.compact(1, true);
    expect((await get(s, 'empty')).length).toBe(0);
    expect(Buffer.from(await get(s, 'idem')).equals(data)).toBe(true);
    expect((await s.scrub()).corrupt).toEqual([]);
  });
});

describe('encryption at rest: compaction crash safety and reads across the swap', () => {
  const STEPS = ['begin', 'copied', 'synced', 'dat-renamed', 'dir-synced', 'idx-renamed', 'done'] as const;
  for (const crashAt of STEPS) {
    it(`a crash image taken at compaction step "${crashAt}" reopens with every blob readable`, async () => {
      const dir = await tempDir();
      let frozen!: () => void;
      const atCrash = new Promise<void>((r) => {
        frozen = r;
      });
      const s = await openStore(dir, {
        maxVolumeSize: 4 << 20,
        keyring: ring(k1),
        hooks: {
          compactionStep: async (step) => {
            if (step === crashAt) {
              await fs.cp(dir, `${dir}-crash`, { recursive: true }); // kill -9 image
              frozen();
              await new Promise(() => {});
            }
          },
        },
      });
      const live = new Map<string, Buffer>();
      for (let i = 0; i < 12; i++) {
        const data = pattern(3000 + i * 9000, `c${i}`);
        await put(s, `c${i}`, data);
        if (i % 3 === 0) await s.delete(`c${i}`);
        else live.set(`c${i}`, data);
      }
      void s.compact(1, true);
      await atCrash;
      const crashed = `${dir}-crash`;
      try {
        let r = await openStore(crashed, { maxVolumeSize: 4 << 20, keyring: ring(k1) });
        const check = async (st: Store) => {
          for (const [id, data] of live) expect(Buffer.from(await get(st, id)).equals(data), id).toBe(true);
          for (let i = 0; i < 12; i += 3) await expect(get(st, `c${i}`)).rejects.toThrow(/deleted/);
          expect((await st.scrub()).corrupt).toEqual([]);
        };
        await check(r);
        expect((await fs.readdir(crashed)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
        await r.compact(1, true);
        await r.close();
        r = await openStore(crashed, { maxVolumeSize: 4 << 20, keyring: ring(k1) });
        await check(r);
        for (const data of live.values()) expect(await plaintextIn(crashed, data)).toEqual([]);
      } finally {
        await fs.rm(crashed, { recursive: true, force: true });
      }
    });
  }

  it('a read opened before compaction streams after the swap (old key kept in memory, or re-resolved)', async () => {
    const dir = await tempDir();
    const s = await open(dir, ring(k1));
    const big = pattern(600_000, 'big'); // streamed from the file, not from the lookup's read
    const small = pattern(9000, 'small'); // served from the lookup's one read
    await put(s, 'big', big);
    await put(s, 'small', small);
    const rb = await s.openRead('big');
    const rs = await s.openRead('small');
    const partial = rb.stream(0, undefined, 64 * 1024)[Symbol.asyncIterator]();
    const first = await partial.next(); // holds the old file: keeps decrypting with the old key
    await s.compact(1, true);
    const parts: Uint8Array[] = [first.value as Uint8Array];
    for (let n = await partial.next(); !n.done; n = await partial.next()) parts.push(n.value);
    expect(Buffer.concat(parts).equals(big)).toBe(true);
    const got: Uint8Array[] = [];
    for await (const c of rs.stream()) got.push(c);
    expect(Buffer.concat(got).equals(small)).toBe(true);
    // Opened before, streamed after: the old file is retired, the stream finds the re-sealed needle.
    const rb2 = await s.openRead('big');
    await s.compact(1, true);
    const got2: Uint8Array[] = [];
    for await (const c of rb2.stream(1000, 500_000)) got2.push(c);
    expect(Buffer.concat(got2).equals(big.subarray(1000, 501_000))).toBe(true);
  });
  it('rewrapKeys while compaction and writes run: every key file ends under the new KEK, and k2 alone opens every blob', async () => {
    const dir = await tempDir();
    const s = await open(dir, ring(k1));
    const blobs = new Map<string, Buffer>();
    for (let i = 0; i < 40; i++) {
      blobs.set(`b${i}`, pattern(20_000 + i, `b${i}`));
      await put(s, `b${i}`, blobs.get(`b${i}`)!);
    }
    for (let i = 0; i < 20; i++) await s.delete(`b${i}`);
    for (let i = 0; i < 20; i++) blobs.delete(`b${i}`);
    expect([...s.keksInUse()]).toEqual(['k1']);
    const writes = (async () => {
      for (let i = 0; i < 10; i++) {
        blobs.set(`w${i}`, pattern(30_000, `w${i}`));
        await put(s, `w${i}`, blobs.get(`w${i}`)!);
      }
    })();
    const [, r] = await Promise.all([s.compact(undefined, true), s.rewrapKeys(ring(k1, k2)), writes]);
    expect(r.volumes).toBeGreaterThanOrEqual(1);
    // Volume 1 was under k1; a volume the writes create after the switch starts under k2.
    expect(r.rewrapped).toBeGreaterThanOrEqual(1);
    expect(r.rewrapped).toBeLessThanOrEqual(r.volumes);
    expect([...s.keksInUse()]).toEqual(['k2']);
    for (const name of (await fs.readdir(dir)).filter((n) => n.endsWith('.keys'))) {
      const j = JSON.parse(await fs.readFile(path.join(dir, name), 'utf8')) as { slots: { kek: string }[] };
      expect(
        j.slots.map((x) => x.kek).every((k) => k === 'k2'),
        name,
      ).toBe(true);
    }
    expect((await fs.readdir(dir)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    // Once more: nothing to do.
    expect((await s.rewrapKeys(ring(k1, k2))).rewrapped).toBe(0);
    await s.close();
    const again = await open(dir, ring(k2));
    for (const [id, data] of blobs) expect(Buffer.from(await get(again, id)).equals(data), id).toBe(true);
    await again.close();
  });

  it('rewrapKeys on a plaintext store is FailedPreconditionError', async () => {
    const s = await open(await tempDir());
    await expect(s.rewrapKeys(ring(k1))).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(s.keksInUse().size).toBe(0);
    await s.close();
  });
});
