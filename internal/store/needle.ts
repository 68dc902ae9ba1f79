/**
 * On-disk needle format (little-endian), see docs/volume-format.md:
 *
 *   header  (40 B): magic u32 | flags u8 | keyLen u8 | reserved u16 | cookie u64 |
 *                   dataSize u64 | writtenAtMs u64 | reserved u32 | headerCrc u32
 *   key     (keyLen B, ASCII blob id)
 *   data    (dataSize B)
 *   footer  (8 B):  magic u32 | dataCrc32c u32
 *   padding (0..7 zero bytes, so the next needle starts 8-byte aligned)
 *
 * headerCrc is the CRC32C of header bytes [0, 36) followed by the key bytes, so a
 * flipped bit anywhere in the header or key is detected before the size field is
 * trusted. The data CRC lives in the footer because it is known only after the
 * data has streamed. Everything here is pure (no I/O).
 */
import { crc32c } from './crc32c.js';
import { ChecksumError } from './errors.js';

export const NEEDLE_HEADER_SIZE = 40;
export const NEEDLE_FOOTER_SIZE = 8;
export const NEEDLE_ALIGN = 8;
export const NEEDLE_MAGIC = 0x4e4b5948; // "HYKN"
export const FOOTER_MAGIC = 0x464b5948; // "HYKF"
export const FLAG_DELETED = 0x01;
const KNOWN_FLAGS = FLAG_DELETED;
/** Largest data size the format accepts (16 GiB); the store limits it further. */
export const MAX_NEEDLE_DATA_SIZE = 2 ** 34;
const MAX_KEY_LENGTH = 255;

export interface NeedleHeader {
  flags: number;
  key: string;
  cookie: bigint;
  dataSize: number;
  writtenAtMs: number;
}

export function align8(n: number): number {
  return n + ((NEEDLE_ALIGN - (n % NEEDLE_ALIGN)) % NEEDLE_ALIGN);
}

/** Total bytes a needle occupies on disk, padding included. */
export function needleLength(keyLength: number, dataSize: number): number {
  return align8(NEEDLE_HEADER_SIZE + keyLength + dataSize + NEEDLE_FOOTER_SIZE);
}

/** Offset of the first data byte relative to the needle start. */
export function dataOffset(keyLength: number): number {
  return NEEDLE_HEADER_SIZE + keyLength;
}

function writeU64(view: DataView, at: number, value: number | bigint): void {
  view.setBigUint64(at, BigInt(value), true);
}

function readSafeU64(view: DataView, at: number): number {
  const lo = view.getUint32(at, true);
  const hi = view.getUint32(at + 4, true);
  if (hi >= 0x200000) return Number.NaN; // >= 2^53
  return hi * 0x100000000 + lo;
}

/** Encodes header + key (40 + keyLen bytes). */
export function encodeHeader(h: NeedleHeader): Uint8Array {
  const keyLen = h.key.length;
  if (keyLen < 1 || keyLen > MAX_KEY_LENGTH) throw new RangeError(`key length ${keyLen} out of range`);
  const buf = new Uint8Array(NEEDLE_HEADER_SIZE + keyLen);
  const view = new DataView(buf.buffer);
  view.setUint32(0, NEEDLE_MAGIC, true);
  buf[4] = h.flags;
  buf[5] = keyLen;
  view.setBigUint64(8, BigInt.asUintN(64, h.cookie), true);
  writeU64(view, 16, h.dataSize);
  writeU64(view, 24, Math.max(0, Math.floor(h.writtenAtMs)));
  for (let i = 0; i < keyLen; i++) buf[NEEDLE_HEADER_SIZE + i] = h.key.charCodeAt(i);
  let crc = crc32c(buf, 0, 0, 36);
  crc = crc32c(buf, crc, NEEDLE_HEADER_SIZE, NEEDLE_HEADER_SIZE + keyLen);
  view.setUint32(36, crc, true);
  return buf;
}

/**
 * Decodes and validates header + key from `buf` starting at `at`. `buf` must
 * hold at least the 40-byte header; if it lacks the key bytes a
 * ChecksumError('truncated') is thrown. Never throws anything else.
 */
export function decodeHeader(
  buf: Uint8Array,
  at = 0,
  where?: { volumeId?: number; offset?: number },
): NeedleHeader {
  const vid = where?.volumeId;
  const off = where?.offset;
  if (buf.length - at < NEEDLE_HEADER_SIZE) {
    throw new ChecksumError('needle header is truncated', 'truncated', vid, off);
  }
  const view = new DataView(buf.buffer, buf.byteOffset + at, buf.length - at);
  if (view.getUint32(0, true) !== NEEDLE_MAGIC) {
    throw new ChecksumError('needle header magic is wrong', 'header-magic', vid, off);
  }
  const keyLen = buf[at + 5]!;
  if (buf.length - at < NEEDLE_HEADER_SIZE + keyLen) {
    throw new ChecksumError('needle key is truncated', 'truncated', vid, off);
  }
  let crc = crc32c(buf, 0, at, at + 36);
  crc = crc32c(buf, crc, at + NEEDLE_HEADER_SIZE, at + NEEDLE_HEADER_SIZE + keyLen);
  if (view.getUint32(36, true) !== crc) {
    throw new ChecksumError('needle header checksum mismatch', 'header-checksum', vid, off);
  }
  const flags = buf[at + 4]!;
  const dataSize = readSafeU64(view, 16);
  const writtenAtMs = readSafeU64(view, 24);
  if (
    keyLen === 0 ||
    (flags & ~KNOWN_FLAGS) !== 0 ||
    view.getUint16(6, true) !== 0 ||
    view.getUint32(32, true) !== 0 ||
    !(dataSize <= MAX_NEEDLE_DATA_SIZE) ||
    Number.isNaN(writtenAtMs) ||
    ((flags & FLAG_DELETED) !== 0 && dataSize !== 0)
  ) {
    throw new ChecksumError('needle header has invalid fields', 'header-field', vid, off);
  }
  let key = '';
  for (let i = 0; i < keyLen; i++) key += String.fromCharCode(buf[at + NEEDLE_HEADER_SIZE + i]!);
  return { flags, key, cookie: view.getBigUint64(8, true), dataSize, writtenAtMs };
}

/** Footer plus zero padding for a needle with this key length and data size. */
export function encodeFooter(dataCrc: number, keyLength: number, dataSize: number): Uint8Array {
  const used = NEEDLE_HEADER_SIZE + keyLength + dataSize;
  const buf = new Uint8Array(needleLength(keyLength, dataSize) - used);
  const view = new DataView(buf.buffer);
  view.setUint32(0, FOOTER_MAGIC, true);
  view.setUint32(4, dataCrc >>> 0, true);
  return buf;
}

/** Validates the footer magic and returns the stored data CRC32C. */
export function decodeFooter(
  buf: Uint8Array,
  at = 0,
  where?: { volumeId?: number; offset?: number },
): number {
  if (buf.length - at < NEEDLE_FOOTER_SIZE) {
    throw new ChecksumError('needle footer is truncated', 'truncated', where?.volumeId, where?.offset);
  }
  const view = new DataView(buf.buffer, buf.byteOffset + at, NEEDLE_FOOTER_SIZE);
  if (view.getUint32(0, true) !== FOOTER_MAGIC) {
    throw new ChecksumError('needle footer magic is wrong', 'footer-magic', where?.volumeId, where?.offset);
  }
  return view.getUint32(4, true);
}

/** Encodes a whole needle (tests, benchmarks, tombstones). */
export function encodeNeedle(h: Omit<NeedleHeader, 'dataSize'>, data: Uint8Array): Uint8Array {
  const header = encodeHeader({ ...h, dataSize: data.length });
  const footer = encodeFooter(crc32c(data), h.key.length, data.length);
  const out = new Uint8Array(header.length + data.length + footer.length);
  out.set(header, 0);
  out.set(data, header.length);
  out.set(footer, header.length + data.length);
  return out;
}

export interface ParsedNeedle {
  header: NeedleHeader;
  data: Uint8Array;
  crc32c: number;
  length: number;
}

/**
 * Parses and fully validates the needle at `buf[at..]` (framing, header CRC,
 * footer magic, data CRC). Throws only ChecksumError; never loops.
 */
export function parseNeedle(buf: Uint8Array, at = 0): ParsedNeedle {
  const header = decodeHeader(buf, at);
  const length = needleLength(header.key.length, header.dataSize);
  if (buf.length - at < length) throw new ChecksumError('needle is truncated', 'truncated');
  const start = at + dataOffset(header.key.length);
  const data = buf.subarray(start, start + header.dataSize);
  const stored = decodeFooter(buf, start + header.dataSize);
  if (crc32c(data) !== stored) throw new ChecksumError('needle data checksum mismatch', 'data-checksum');
  return { header, data, crc32c: stored, length };
}
