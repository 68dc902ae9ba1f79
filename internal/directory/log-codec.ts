import { crc32 } from 'node:zlib';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  type LogEntry,
  LogEntrySchema,
  type MetadataSnapshot,
  MetadataSnapshotSchema,
} from '../../gen/haystack/v1/metadata_pb.js';

/**
 * On-disk formats of the metadata log and snapshots (pure; no I/O).
 *
 * Log file: a sequence of records, each
 *   u32 LE payload length | u32 LE CRC-32 of the payload | u32 LE CRC-32 of the
 *   previous 8 bytes (header check) | payload (LogEntry, protobuf binary)
 * The header check tells a damaged length apart from a write cut short. A tail that
 * is a partial header, all zeros, a whole header whose payload runs past the end,
 * or a last record with a bad payload checksum is a torn tail (a write cut short by
 * a crash: never fsync'd, so never acknowledged) and is cut on restart. Anything
 * else that fails a check (a bad header, a bad record followed by more bytes, an
 * undecodable payload, an index gap) is corruption: refused with a clear error.
 *
 * Snapshot file: "HAYSNAP1" | u32 LE payload length | u32 LE CRC-32 | payload
 * (MetadataSnapshot). Written to a temporary file, fsync'd and renamed, so it is
 * either whole or absent: any defect is corruption.
 */

export const RECORD_HEADER_BYTES = 12;
/** No single entry is anywhere near this; a larger length is corruption. */
export const MAX_RECORD_BYTES = 64 * 1024 * 1024;
const SNAPSHOT_MAGIC = Buffer.from('HAYSNAP1', 'latin1');

/** The log or a snapshot is damaged in a way that cutting a torn tail cannot explain. */
export class LogCorruptError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LogCorruptError';
  }
}

export function encodeRecord(entry: LogEntry): Buffer {
  const payload = toBinary(LogEntrySchema, entry);
  const out = Buffer.allocUnsafe(RECORD_HEADER_BYTES + payload.length);
  out.writeUInt32LE(payload.length, 0);
  out.writeUInt32LE(crc32(payload), 4);
  out.writeUInt32LE(crc32(out.subarray(0, 8)), 8);
  out.set(payload, RECORD_HEADER_BYTES);
  return out;
}

export function encodeRecords(entries: readonly LogEntry[]): Buffer {
  return Buffer.concat(entries.map(encodeRecord));
}

export interface DecodedLog {
  entries: LogEntry[];
  /** Byte offset of each entry's record. */
  offsets: number[];
  /** Bytes that hold whole, valid records (the file is cut here). */
  validBytes: number;
  /** Why the bytes after validBytes were dropped, when they were. */
  tornTail: string | null;
}

/**
 * Reads log records. Returns the valid records and where a torn tail starts;
 * throws LogCorruptError for damage before the tail (bad checksum followed by more
 * data, undecodable payload, index gaps).
 */
export function decodeLog(data: Uint8Array): DecodedLog {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const entries: LogEntry[] = [];
  const offsets: number[] = [];
  let off = 0;
  let tornTail: string | null = null;
  while (off < buf.length) {
    const remaining = buf.length - off;
    const where = `record at byte ${off}${entries.length ? ` (after index ${entries[entries.length - 1]?.index})` : ''}`;
    if (remaining < RECORD_HEADER_BYTES) {
      tornTail = `${where}: ${remaining} bytes, shorter than a record header`;
      break;
    }
    const len = buf.readUInt32LE(off);
    const crc = buf.readUInt32LE(off + 4);
    if (crc32(buf.subarray(off, off + 8)) !== buf.readUInt32LE(off + 8)) {
      if (isAllZero(buf, off)) {
        tornTail = `${where}: ${remaining} zero bytes`;
        break;
      }
      throw new LogCorruptError(`metadata log is corrupt: ${where} has a damaged header`);
    }
    if (len === 0 || len > MAX_RECORD_BYTES) {
      throw new LogCorruptError(
        `metadata log is corrupt: ${where} declares ${len} bytes (allowed 1..${MAX_RECORD_BYTES})`,
      );
    }
    if (len > remaining - RECORD_HEADER_BYTES) {
      tornTail = `${where}: declares ${len} bytes, only ${remaining - RECORD_HEADER_BYTES} present`;
      break;
    }
    const payload = buf.subarray(off + RECORD_HEADER_BYTES, off + RECORD_HEADER_BYTES + len);
    const end = off + RECORD_HEADER_BYTES + len;
    if (crc32(payload) !== crc) {
      if (end === buf.length) {
        tornTail = `${where}: last record fails its checksum`;
        break;
      }
      throw new LogCorruptError(
        `metadata log is corrupt: ${where} fails its checksum and ${buf.length - end} bytes follow it`,
      );
    }
    let entry: LogEntry;
    try {
      entry = fromBinary(LogEntrySchema, payload);
    } catch (err) {
      throw new LogCorruptError(
        `metadata log is corrupt: ${where} passes its checksum but does not decode (${err instanceof Error ? err.message : String(err)})`,
      );
    }
    const prev = entries[entries.length - 1];
    if (entry.index < 1n || entry.term < 1n) {
      throw new LogCorruptError(
        `metadata log is corrupt: ${where} has index ${entry.index} term ${entry.term}`,
      );
    }
    if (prev && entry.index !== prev.index + 1n) {
      throw new LogCorruptError(
        `metadata log is corrupt: ${where} has index ${entry.index}, expected ${prev.index + 1n}`,
      );
    }
    if (prev && entry.term < prev.term) {
      throw new LogCorruptError(
        `metadata log is corrupt: ${where} has term ${entry.term} after term ${prev.term}`,
      );
    }
    entries.push(entry);
    offsets.push(off);
    off = end;
  }
  return { entries, offsets, validBytes: off, tornTail };
}

function isAllZero(buf: Buffer, from: number): boolean {
  for (let i = from; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

export function encodeSnapshot(snap: MetadataSnapshot): Buffer {
  const payload = toBinary(MetadataSnapshotSchema, snap);
  const head = Buffer.allocUnsafe(SNAPSHOT_MAGIC.length + 8);
  SNAPSHOT_MAGIC.copy(head, 0);
  head.writeUInt32LE(payload.length, SNAPSHOT_MAGIC.length);
  head.writeUInt32LE(crc32(payload), SNAPSHOT_MAGIC.length + 4);
  return Buffer.concat([head, payload]);
}

/** Decodes a snapshot file; any defect throws LogCorruptError. */
export function decodeSnapshot(data: Uint8Array): MetadataSnapshot {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const h = SNAPSHOT_MAGIC.length + 8;
  if (buf.length < h || !buf.subarray(0, SNAPSHOT_MAGIC.length).equals(SNAPSHOT_MAGIC)) {
    throw new LogCorruptError('metadata snapshot is corrupt: missing the HAYSNAP1 header');
  }
  const len = buf.readUInt32LE(SNAPSHOT_MAGIC.length);
  const crc = buf.readUInt32LE(SNAPSHOT_MAGIC.length + 4);
  if (len !== buf.length - h) {
    throw new LogCorruptError(
      `metadata snapshot is corrupt: header says ${len} bytes of data, the file has ${buf.length - h}`,
    );
  }
  const payload = buf.subarray(h);
  if (crc32(payload) !== crc) throw new LogCorruptError('metadata snapshot is corrupt: checksum mismatch');
  try {
    return fromBinary(MetadataSnapshotSchema, payload);
  } catch (err) {
    throw new LogCorruptError(
      `metadata snapshot is corrupt: passes its checksum but does not decode (${err instanceof Error ? err.message : String(err)})`,
    );
  }
}
