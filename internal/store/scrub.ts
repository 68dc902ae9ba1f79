/**
 * Scrub: verify every needle the volume's index lists (live, tombstones and
 * superseded ones): header CRC, key/size/flags agreement with the index,
 * footer magic (and the v2 footer CRC) and data CRC32C; for encrypted needles
 * also the AES-256-GCM tag (decrypting into a scratch buffer: the stored CRC
 * catches disk rot without keys, the tag proves the bytes, header and key are
 * the ones written). Corrupt needles are reported with the blob id
 * taken from the index record (readable even when the header is not).
 */
import { crc32c } from './crc32c.js';
import { NeedleOpener, needleAad } from './crypto/needle-seal.js';
import { ChecksumError } from './errors.js';
import { readFully } from './fs-util.js';
import { INDEX_HEADER_SIZE, type IndexRecord, scanIndexFile } from './index-file.js';
import {
  dataOffsetOf,
  decodeFooterFull,
  decodeHeader,
  FLAG_ENCRYPTED,
  footerSize,
  lengthOf,
  MAX_HEADER_LENGTH,
} from './needle.js';
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
      const head = new Uint8Array(MAX_HEADER_LENGTH);
      const chunk = new Uint8Array(1 << 20);
      for (const r of records) {
        report.needlesChecked++;
        const length = lengthOf(r);
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
          if (
            h.key !== r.key ||
            h.dataSize !== r.dataSize ||
            h.flags !== r.flags ||
            h.cookie !== r.cookie ||
            h.metaLen !== (r.metaLen ?? 0)
          ) {
            bad('needle header disagrees with the index record');
            continue;
          }
          const footAt = r.offset + dataOffsetOf(r) + r.dataSize;
          const footBuf = new Uint8Array(footerSize(r.flags));
          const got = await readFully(dat.handle, footBuf, footAt);
          const foot = decodeFooterFull(footBuf.subarray(0, got), 0, undefined, r.flags);
          let opener: NeedleOpener | undefined;
          if ((h.flags & FLAG_ENCRYPTED) !== 0) {
            const dek = v.keys?.dek(h.keySlot ?? 0);
            if (!dek) {
              bad(`needle names key slot ${h.keySlot}, which the volume does not have`);
              continue;
            }
            opener = new NeedleOpener(dek, needleAad(h), foot.nonce!, foot.tag!);
          }
          let crc = 0;
          let at = r.offset + dataOffsetOf(r);
          for (let left = r.dataSize; left > 0; ) {
            const want = Math.min(left, chunk.length);
            const got = await readFully(dat.handle, chunk, at, want);
            if (got < want) throw new ChecksumError('needle data is truncated', 'truncated');
            const part = chunk.subarray(0, want);
            crc = crc32c(part, crc);
            opener?.update(part);
            at += want;
            left -= want;
          }
          const stored = foot.storedCrc;
          if (stored !== crc) {
            bad(`data checksum mismatch (stored ${stored.toString(16)}, computed ${crc.toString(16)})`);
          } else if (opener && !opener.final()) {
            bad('AES-GCM tag mismatch (ciphertext, header or footer changed, or the wrong key)');
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
