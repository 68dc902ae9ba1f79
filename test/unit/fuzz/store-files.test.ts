import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StoreError } from '../../../internal/store/errors.js';
import {
  decodeIndexHeader,
  decodeIndexRecord,
  INDEX_HEADER_SIZE,
  INDEX_RECORD_FIXED,
} from '../../../internal/store/index-file.js';
import type { Store } from '../../../internal/store/store.js';
import { blob, get, openStore, put, tempDir } from '../store/helpers.js';

/**
 * Property tests of the store's on-disk loaders against random and mutated
 * bytes (the needle parser itself is fuzzed in test/unit/store/format.test.ts):
 * the index header and record decoders, and Store.open — recovery of the volume
 * and index files — after random damage. No crash, no hang; corrupt input is
 * rejected with a StoreError or recovered from, and a blob that reads back reads
 * back exactly the bytes written.
 */
describe('index decoders on random bytes', () => {
  it('decodeIndexHeader throws only StoreErrors; decodeIndexRecord returns a record or null, never throws', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.nat(600), (bytes, at) => {
        try {
          decodeIndexHeader(bytes);
        } catch (e) {
          expect(e).toBeInstanceOf(StoreError);
        }
        const r = decodeIndexRecord(bytes, Math.min(at, bytes.length));
        if (r) {
          expect(r.next).toBeGreaterThanOrEqual(Math.min(at, bytes.length) + INDEX_RECORD_FIXED + 1);
          expect(r.next).toBeLessThanOrEqual(bytes.length);
        }
      }),
      { numRuns: 3000 },
    );
  });
});

const BLOBS = Array.from({ length: 6 }, (_, i) => ({ id: `blob-${i}`, data: blob(200 + i * 911, i) }));

async function populated(): Promise<string> {
  const dir = await tempDir();
  const s = await openStore(dir, { maxVolumeSize: 1 << 20 });
  for (const b of BLOBS) await put(s, b.id, b.data);
  await s.delete('blob-5');
  await s.close();
  return dir;
}

/** Opens the damaged store and reads every blob: exact bytes, or an error — never other bytes. */
async function openAndRead(dir: string): Promise<string> {
  let s: Store;
  try {
    s = await openStore(dir, { maxVolumeSize: 1 << 20 });
  } catch (e) {
    // Refusing to open is fine when it says why.
    expect(e instanceof StoreError || (e as NodeJS.ErrnoException).code !== undefined, String(e)).toBe(true);
    expect(String((e as Error).message).length).toBeGreaterThan(0);
    return 'refused';
  }
  let readable = 0;
  for (const b of BLOBS) {
    try {
      const got = await get(s, b.id);
      expect(Buffer.from(got).equals(Buffer.from(b.data)), `${b.id} came back with other bytes`).toBe(true);
      // (blob-5 was deleted; damage that destroys its tombstone may bring it back — intact.)
      readable++;
    } catch (e) {
      expect(e, `${b.id}: ${String(e)}`).toBeInstanceOf(StoreError);
    }
  }
  // Still writable after recovery.
  await put(s, `after-${readable}`, blob(100, 9));
  return `opened, ${readable} readable`;
}

describe('Store.open after random damage to its files', () => {
  it('flipped bytes anywhere in the volume or index file', async () => {
    const pristine = await populated();
    const dat = await readFile(path.join(pristine, '1.dat'));
    const idx = await readFile(path.join(pristine, '1.idx'));
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('1.dat', '1.idx'),
        fc.array(fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), {
          minLength: 1,
          maxLength: 4,
        }),
        async (file, flips) => {
          const dir = await tempDir();
          const d = Buffer.from(dat);
          const x = Buffer.from(idx);
          const target = file === '1.dat' ? d : x;
          for (const f of flips) {
            const i = f.at % target.length;
            target[i] = (target[i] as number) ^ f.xor;
          }
          await writeFile(path.join(dir, '1.dat'), d);
          await writeFile(path.join(dir, '1.idx'), x);
          await openAndRead(dir);
        },
      ),
      { numRuns: 60 },
    );
  }, 120_000);

  it('truncated files and random garbage appended or in place of the index', async () => {
    const pristine = await populated();
    const dat = await readFile(path.join(pristine, '1.dat'));
    const idx = await readFile(path.join(pristine, '1.idx'));
    await fc.assert(
      fc.asyncProperty(
        fc.nat(dat.length),
        fc.nat(idx.length),
        fc.uint8Array({ maxLength: 300 }),
        fc.constantFrom('truncate', 'append', 'replace-index'),
        async (datCut, idxCut, junk, how) => {
          const dir = await tempDir();
          let d = Buffer.from(dat);
          let x = Buffer.from(idx);
          if (how === 'truncate') {
            d = d.subarray(0, Math.max(datCut, 0));
            x = x.subarray(0, Math.max(idxCut, 0));
          } else if (how === 'append') {
            d = Buffer.concat([d, junk]);
            x = Buffer.concat([x, junk]);
          } else {
            x = Buffer.concat([x.subarray(0, INDEX_HEADER_SIZE), junk]);
          }
          await writeFile(path.join(dir, '1.dat'), d);
          await writeFile(path.join(dir, '1.idx'), x);
          await openAndRead(dir);
        },
      ),
      { numRuns: 60 },
    );
  }, 120_000);
});
