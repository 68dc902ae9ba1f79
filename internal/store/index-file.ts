/**
 * Per-volume index file `<vid>.idx`: a 32-byte header, then one record per
 * committed needle in commit order (little-endian):
 *
 * header:  0 magic u32 "HYKI" | 4 version u16 | 6 reserved u16 | 8 volumeId u32 |
 *          12 generation u32 (must equal the .dat superblock's) | 16 createdAtMs u64 |
 *          24 reserved u32 | 28 crc32c u32 of [0, 28)
 * record:  0 crc32c u32 of [4, 40 + keyLen) | 4 keyLen u8 | 5 flags u8 | 6 metaLen u16 |
 *          8 offset u64 | 16 dataSize u64 | 24 cookie u64 | 32 writtenAtMs u64 | 40 key
 *
 * metaLen is the needle's content type + file name bytes (format v2, flag
 * FLAG_V2; 0 for v1 needles, whose records had a zero reserved field there), so
 * the needle's length follows from the record alone.
 *
 * A record that fails its CRC (torn write) ends the usable index: it and
 * everything after it are cut. The codec is pure; `scanIndexFile` does the
 * chunked reading.
 */
import type { FileHandle } from 'node:fs/promises';
import { crc32c } from './crc32c.js';
import { ChecksumError } from './errors.js';
import { FLAG_V2, MAX_META_FIELD } from './needle.js';

export const INDEX_HEADER_SIZE = 32;
export const INDEX_MAGIC = 0x494b5948; // "HYKI"
export const INDEX_VERSION = 1;
export const INDEX_RECORD_FIXED = 40;

export interface IndexHeader {
  volumeId: number;
  generation: number;
  createdAtMs: number;
}

export interface IndexRecord {
  key: string;
  flags: number;
  offset: number;
  dataSize: number;
  cookie: bigint;
  writtenAtMs: number;
  /** Content type + file name bytes in the needle (format v2); 0 or absent for v1. */
  metaLen?: number;
}

export function encodeIndexHeader(h: IndexHeader): Uint8Array {
  const buf = new Uint8Array(INDEX_HEADER_SIZE);
  const view = new DataView(buf.buffer);
  view.setUint32(0, INDEX_MAGIC, true);
  view.setUint16(4, INDEX_VERSION, true);
  view.setUint32(8, h.volumeId, true);
  view.setUint32(12, h.generation, true);
  view.setBigUint64(16, BigInt(Math.max(0, Math.floor(h.createdAtMs))), true);
  view.setUint32(28, crc32c(buf, 0, 0, 28), true);
  return buf;
}

export function decodeIndexHeader(buf: Uint8Array): IndexHeader {
  if (buf.length < INDEX_HEADER_SIZE) throw new ChecksumError('index header is truncated', 'index');
  const view = new DataView(buf.buffer, buf.byteOffset, INDEX_HEADER_SIZE);
  if (view.getUint32(0, true) !== INDEX_MAGIC || view.getUint16(4, true) !== INDEX_VERSION) {
    throw new ChecksumError('index header magic/version is wrong', 'index');
  }
  if (view.getUint32(28, true) !== crc32c(buf, 0, 0, 28)) {
    throw new ChecksumError('index header checksum mismatch', 'index');
  }
  return {
    volumeId: view.getUint32(8, true),
    generation: view.getUint32(12, true),
    createdAtMs: Number(view.getBigUint64(16, true)),
  };
}

export function indexRecordLength(keyLength: number): number {
  return INDEX_RECORD_FIXED + keyLength;
}

/** Encodes `records` back to back into one buffer (one write per batch). */
export function encodeIndexRecords(records: readonly IndexRecord[]): Uint8Array {
  let total = 0;
  for (const r of records) total += indexRecordLength(r.key.length);
  const buf = new Uint8Array(total);
  const view = new DataView(buf.buffer);
  let at = 0;
  for (const r of records) {
    const len = indexRecordLength(r.key.length);
    buf[at + 4] = r.key.length;
    buf[at + 5] = r.flags;
    view.setUint16(at + 6, r.metaLen ?? 0, true);
    view.setBigUint64(at + 8, BigInt(r.offset), true);
    view.setBigUint64(at + 16, BigInt(r.dataSize), true);
    view.setBigUint64(at + 24, BigInt.asUintN(64, r.cookie), true);
    view.setBigUint64(at + 32, BigInt(Math.max(0, Math.floor(r.writtenAtMs))), true);
    for (let i = 0; i < r.key.length; i++) buf[at + INDEX_RECORD_FIXED + i] = r.key.charCodeAt(i);
    view.setUint32(at, crc32c(buf, 0, at + 4, at + len), true);
    at += len;
  }
  return buf;
}

function u64(view: DataView, at: number): number {
  const lo = view.getUint32(at, true);
  const hi = view.getUint32(at + 4, true);
  return hi >= 0x200000 ? Number.NaN : hi * 0x100000000 + lo;
}

/**
 * Decodes the record at `buf[at..end)`. Returns null when the record is
 * incomplete or fails validation (torn / corrupt): the caller cuts there.
 */
export function decodeIndexRecord(
  buf: Uint8Array,
  at: number,
  end = buf.length,
): { record: IndexRecord; next: number } | null {
  if (end - at < INDEX_RECORD_FIXED) return null;
  const keyLen = buf[at + 4]!;
  const len = INDEX_RECORD_FIXED + keyLen;
  if (keyLen === 0 || end - at < len) return null;
  const view = new DataView(buf.buffer, buf.byteOffset + at, len);
  if (view.getUint32(0, true) !== crc32c(buf, 0, at + 4, at + len)) return null;
  const offset = u64(view, 8);
  const dataSize = u64(view, 16);
  const writtenAtMs = u64(view, 32);
  const flags = buf[at + 5]!;
  const metaLen = view.getUint16(6, true);
  if (
    Number.isNaN(offset) ||
    Number.isNaN(dataSize) ||
    Number.isNaN(writtenAtMs) ||
    metaLen > 2 * MAX_META_FIELD ||
    ((flags & FLAG_V2) === 0 && metaLen !== 0)
  ) {
    return null;
  }
  let key = '';
  for (let i = 0; i < keyLen; i++) key += String.fromCharCode(buf[at + INDEX_RECORD_FIXED + i]!);
  return {
    record: { key, flags, offset, dataSize, cookie: view.getBigUint64(24, true), writtenAtMs, metaLen },
    next: at + len,
  };
}

/**
 * Reads records from `start` to `end` of an index file in large chunks, calling
 * `onRecord` for each valid record. Returns the byte position just after the
 * last valid record (== end when the file is intact; less when torn).
 */
export async function scanIndexFile(
  handle: FileHandle,
  start: number,
  end: number,
  onRecord: (record: IndexRecord, position: number) => void,
  chunkSize = 4 << 20,
): Promise<number> {
  let buf = new Uint8Array(chunkSize);
  let bufStart = start; // file position of buf[0]
  let have = 0;
  let pos = start;
  while (pos < end) {
    // keep unconsumed bytes, refill
    const consumed = pos - bufStart;
    if (consumed > 0) {
      buf.copyWithin(0, consumed, have);
      have -= consumed;
      bufStart = pos;
    }
    if (have < INDEX_RECORD_FIXED + 255 && bufStart + have < end) {
      if (buf.length - have < 4096) {
        const bigger = new Uint8Array(buf.length * 2);
        bigger.set(buf.subarray(0, have));
        buf = bigger;
      }
      const want = Math.min(buf.length - have, end - (bufStart + have));
      const { bytesRead } = await handle.read(buf, have, want, bufStart + have);
      if (bytesRead === 0) break;
      have += bytesRead;
    }
    let at = pos - bufStart;
    let progressed = false;
    while (at < have) {
      const r = decodeIndexRecord(buf, at, have);
      if (r === null) break;
      onRecord(r.record, bufStart + at);
      at = r.next;
      progressed = true;
    }
    pos = bufStart + at;
    if (!progressed && (have >= INDEX_RECORD_FIXED + 255 || bufStart + have >= end)) break; // torn/corrupt
  }
  return pos;
}
