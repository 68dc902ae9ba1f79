import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  encodeIndexHeader,
  encodeIndexRecords,
  type IndexRecord,
} from '../../../internal/store/index-file.js';
import { encodeSuperblock, SUPERBLOCK_SIZE } from '../../../internal/store/superblock.js';
import { blob, get, hex, openStore, put, sha256, tempDir } from './helpers.js';
import { encodeV1Needle } from './v1-needle.js';

/**
 * A data directory written before format v2 (needles and index records by the
 * old encoders) loads, serves, scrubs and compacts under the v2 store, next to
 * new v2 needles.
 */
async function writeV1Volume(dir: string, withIndex: boolean): Promise<void> {
  const needles: { key: string; data: Uint8Array; deleted: boolean; stamp: number }[] = [
    { key: 'old-a', data: blob(3000, 1), deleted: false, stamp: 1_000 },
    { key: 'old-b', data: blob(70_000, 2), deleted: false, stamp: 1_001 },
    { key: 'old-c', data: blob(10, 3), deleted: false, stamp: 1_002 },
    { key: 'old-c', data: new Uint8Array(0), deleted: true, stamp: 1_003 },
  ];
  const parts: Uint8Array[] = [encodeSuperblock({ volumeId: 1, generation: 0, createdAtMs: 900 })];
  const records: IndexRecord[] = [];
  let at = SUPERBLOCK_SIZE;
  for (const n of needles) {
    const bytes = encodeV1Needle(
      { key: n.key, cookie: 7n, deleted: n.deleted, writtenAtMs: n.stamp },
      n.data,
    );
    parts.push(bytes);
    // The old index record had no metaLen (a zero reserved field).
    records.push({
      key: n.key,
      flags: n.deleted ? 1 : 0,
      offset: at,
      dataSize: n.data.length,
      cookie: 7n,
      writtenAtMs: n.stamp,
    });
    at += bytes.length;
  }
  await fs.writeFile(path.join(dir, '1.dat'), Buffer.concat(parts));
  if (withIndex) {
    const idx = Buffer.concat([
      encodeIndexHeader({ volumeId: 1, generation: 0, createdAtMs: 900 }),
      encodeIndexRecords(records),
    ]);
    await fs.writeFile(path.join(dir, '1.idx'), idx);
  }
}

describe('format v1 volumes under the v2 store', () => {
  for (const withIndex of [true, false]) {
    it(`loads, serves, scrubs and compacts v1 needles beside v2 ones (${withIndex ? 'with its index' : 'index rebuilt'})`, async () => {
      const dir = await tempDir();
      await writeV1Volume(dir, withIndex);
      let s = await openStore(dir);
      expect(hex(await get(s, 'old-a'))).toBe(hex(blob(3000, 1)));
      expect(hex(await get(s, 'old-b'))).toBe(hex(blob(70_000, 2)));
      await expect(s.openRead('old-c')).rejects.toThrow(/deleted/);
      const r = await s.openRead('old-a');
      expect(r.sha256).toBeUndefined(); // v1 needles record no SHA-256
      expect(r.contentType).toBe('');
      expect(r.writtenAtMs).toBe(1_000);
      expect(r.cookie).toBe(7n);
      // A new needle in the same volume is v2, with its facts.
      const fresh = blob(5000, 9);
      await put(s, 'new-a', fresh, { contentType: 'image/png', fileName: 'ä.png' });
      const n = await s.openRead('new-a');
      expect(hex(n.sha256!)).toBe(hex(sha256(fresh)));
      expect(n.contentType).toBe('image/png');
      expect(n.fileName).toBe('ä.png');
      expect((await s.scrub()).corrupt).toEqual([]);
      // Compaction copies the v1 needles as they are.
      await s.compact(1, true);
      expect((await s.openRead('old-a')).sha256).toBeUndefined();
      await s.close();
      s = await openStore(dir);
      expect(hex(await get(s, 'old-a'))).toBe(hex(blob(3000, 1)));
      expect(hex(await get(s, 'old-b'))).toBe(hex(blob(70_000, 2)));
      expect(hex(await get(s, 'new-a'))).toBe(hex(fresh));
      expect((await s.openRead('new-a')).fileName).toBe('ä.png');
      await expect(s.openRead('old-c')).rejects.toThrow(/deleted/);
      expect((await s.scrub()).corrupt).toEqual([]);
      // An identical retry of a v1 blob is recognised (its SHA-256 computed from the data).
      expect((await put(s, 'old-a', blob(3000, 1), { cookie: 7n })).existed).toBe(true);
    });
  }
});
