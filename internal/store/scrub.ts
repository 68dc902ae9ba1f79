/**
 * Scrub: verify every needle the volume's index lists (live, tombstones and
 * superseded ones): header CRC, key/size/flags agreement with the index,
 * footer magic and data CRC32C. Corrupt needles are reported with the blob id
 * taken from the index record (readable even when the header is not).
 */
import { crc32c } from './crc32c.js';
import { ChecksumError } from './errors.js';
import { readFully } from './fs-util.js';
import { INDEX_HEADER_SIZE, type IndexRecord, scanIndexFile } from './index-file.js';
import { dataOffset, decodeFooter, decodeHeader, NEEDLE_HEADER_SIZE, needleLength } from './needle.js';
import type { NeedleMap } from './needle-map.js';
import type { Volume } from './volume.js';

export interface CorruptNeedleReport {
  blobId?: string;
  volumeId: number;
  offset: number;
  reason: string;
  /** Not the current needle of its blob id (never served; compaction drops it). */
  superseded: boolean;
}

export interface ScrubReport {
  needlesChecked: number;
  bytesChecked: number;
  corrupt: CorruptNeedleReport[];
}

export async function scrubVolume(v: Volume, map: NeedleMap): Promise<ScrubReport> {
  const report: ScrubReport = { needlesChecked: 0, bytesChecked: 0, corrupt: [] };
  for (let attempt = 0; attempt < 4; attempt++) {
    const dat = v.dat;
    const idx = v.idx;
    if (!dat.acquire()) continue;
    if (!idx.acquire()) {
      dat.release();
      continue;
    }
    try {
      const records: IndexRecord[] = [];
      await scanIndexFile(idx.handle, INDEX_HEADER_SIZE, v.idxTail, (r) => records.push(r));
      records.sort((a, b) => a.offset - b.offset);
      const head = new Uint8Array(NEEDLE_HEADER_SIZE + 255);
      const chunk = new Uint8Array(1 << 20);
      for (const r of records) {
        report.needlesChecked++;
        const length = needleLength(r.key.length, r.dataSize);
        report.bytesChecked += length;
        const cur = map.lookup(r.key);
        const current = cur !== undefined && cur.volumeId === v.id && cur.offset === r.offset;
        const bad = (reason: string) =>
          report.corrupt.push({
            blobId: r.key,
            volumeId: v.id,
            offset: r.offset,
            reason: current ? reason : `${reason} (superseded needle; compaction will drop it)`,
            superseded: !current,
          });
        try {
          const n = await readFully(dat.handle, head, r.offset);
          const h = decodeHeader(head.subarray(0, n));
          if (h.key !== r.key || h.dataSize !== r.dataSize || h.flags !== r.flags || h.cookie !== r.cookie) {
            bad('needle header disagrees with the index record');
            continue;
          }
          let crc = 0;
          let at = r.offset + dataOffset(r.key.length);
          for (let left = r.dataSize; left > 0; ) {
            const want = Math.min(left, chunk.length);
            const got = await readFully(dat.handle, chunk, at, want);
            if (got < want) throw new ChecksumError('needle data is truncated', 'truncated');
            crc = crc32c(chunk, crc, 0, want);
            at += want;
            left -= want;
          }
          const foot = new Uint8Array(8);
          const stored = decodeFooter(foot.subarray(0, await readFully(dat.handle, foot, at)));
          if (stored !== crc) {
            bad(`data checksum mismatch (stored ${stored.toString(16)}, computed ${crc.toString(16)})`);
          }
        } catch (err) {
          if (err instanceof ChecksumError) bad(err.message);
          else throw err;
        }
      }
      return report;
    } finally {
      dat.release();
      idx.release();
    }
  }
  throw new Error(`volume ${v.id} kept changing during scrub; retry`);
}
