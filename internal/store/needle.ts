/**
 * On-disk needle format (little-endian), see docs/volume-format.md:
 *
 *   header  (40 B): magic u32 | flags u8 | keyLen u8 | reserved u16 | cookie u64 |
 *                   dataSize u64 | writtenAtMs u64 | ctLen u8 | fnLen u8 | reserved u16 |
 *                   headerCrc u32
 *   key     (keyLen B, ASCII blob id)
 *   meta    (v2 only: ctLen B content type, fnLen B file name, UTF-8)
 *   data    (dataSize B)
 *   footer  v1 (8 B):  magic u32 | dataCrc32c u32
 *           v2 (44 B): magic u32 | dataCrc32c u32 | sha256 (32 B) | footerCrc u32 of [0, 40)
 *   padding (0..7 zero bytes, so the next needle starts 8-byte aligned)
 *
 * Encrypted needles (flag bit 2, FLAG_ENCRYPTED, with FLAG_V2): bytes 6..7 of
 * the header hold the key slot (the volume DEK that sealed the data), the data
 * is AES-256-GCM ciphertext, and the footer grows to 76 bytes (content CRC,
 * nonce, tag); see internal/store/crypto/ and docs/volume-format.md.
 *
 * Format v2 is flag bit 1 (FLAG_V2): v1 needles (flag clear, bytes 32..35 zero)
 * load unchanged. headerCrc is the CRC32C of header bytes [0, 36) followed by the
 * key and meta bytes, so a flipped bit anywhere in the header, key or meta is
 * detected before the size field is trusted. The data CRC (and, in v2, the
 * SHA-256) live in the footer because they are known only after the data has
 * streamed. Everything here is pure (no I/O).
 */
import { crc32c } from './crc32c.js';
import { ChecksumError } from './errors.js';

export const NEEDLE_HEADER_SIZE = 40;
/** v1 footer: magic + data CRC. */
export const NEEDLE_FOOTER_SIZE = 8;
/** v2 footer: magic + data CRC + SHA-256 + footer CRC. */
export const NEEDLE_FOOTER_SIZE_V2 = 44;
/** Encrypted footer: magic + stored CRC + SHA-256 + content CRC + nonce + tag + footer CRC. */
export const NEEDLE_FOOTER_SIZE_SEALED = 76;
/** AES-256-GCM nonce (96 bits, NIST SP 800-38D §8.2.2: random per needle). */
export const NONCE_SIZE = 12;
/** AES-256-GCM authentication tag (128 bits). */
export const TAG_SIZE = 16;
export const NEEDLE_ALIGN = 8;
export const NEEDLE_MAGIC = 0x4e4b5948; // "HYKN"
export const FOOTER_MAGIC = 0x464b5948; // "HYKF"
export const FLAG_DELETED = 0x01;
/** Format v2: content type and file name after the key, SHA-256 in a 44-byte footer. */
export const FLAG_V2 = 0x02;
/** Data sealed with AES-256-GCM under the volume key in the header's key slot (needs FLAG_V2). */
export const FLAG_ENCRYPTED = 0x04;
const KNOWN_FLAGS = FLAG_DELETED | FLAG_V2 | FLAG_ENCRYPTED;
/** Largest key slot (u16 in header bytes 6..7). */
export const MAX_KEY_SLOT = 0xffff;
/** Largest data size the format accepts (16 GiB); the store limits it further. */
export const MAX_NEEDLE_DATA_SIZE = 2 ** 34;
const MAX_KEY_LENGTH = 255;
/** Largest content type / file name, in UTF-8 bytes. */
export const MAX_META_FIELD = 255;
/** Largest header + key + meta: what one read must fetch to decode any header. */
export const MAX_HEADER_LENGTH = NEEDLE_HEADER_SIZE + MAX_KEY_LENGTH + 2 * MAX_META_FIELD;

export interface NeedleHeader {
  flags: number;
  key: string;
  cookie: bigint;
  dataSize: number;
  writtenAtMs: number;
  /** MIME type (v2; '' for v1). */
  contentType?: string;
  /** Original file name (v2; '' for v1). */
  fileName?: string;
  /** UTF-8 bytes of contentType + fileName after the key (0 for v1); set by decodeHeader. */
  metaLen?: number;
  /** FLAG_ENCRYPTED: the volume key slot (1..65535) whose DEK sealed the data; 0 / absent otherwise. */
  keySlot?: number;
}

/** What decides a needle's length on disk (a header or an index record). */
export interface NeedleShape {
  key: string;
  flags: number;
  dataSize: number;
  metaLen?: number;
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

export function align8(n: number): number {
  return n + ((NEEDLE_ALIGN - (n % NEEDLE_ALIGN)) % NEEDLE_ALIGN);
}

/** Footer size for a needle with these flags. */
export function footerSize(flags: number): number {
  if ((flags & FLAG_ENCRYPTED) !== 0) return NEEDLE_FOOTER_SIZE_SEALED;
  return (flags & FLAG_V2) !== 0 ? NEEDLE_FOOTER_SIZE_V2 : NEEDLE_FOOTER_SIZE;
}

/** Total bytes a needle occupies on disk, padding included (v1 defaults). */
export function needleLength(keyLength: number, dataSize: number, flags = 0, metaLen = 0): number {
  return align8(NEEDLE_HEADER_SIZE + keyLength + metaLen + dataSize + footerSize(flags));
}

/** Total bytes of the needle a header or index record describes. */
export function lengthOf(n: NeedleShape): number {
  return needleLength(n.key.length, n.dataSize, n.flags, n.metaLen ?? 0);
}

/** Offset of the first data byte relative to the needle start. */
export function dataOffset(keyLength: number, metaLen = 0): number {
  return NEEDLE_HEADER_SIZE + keyLength + metaLen;
}

/** Offset of the first data byte of the needle a header or record describes. */
export function dataOffsetOf(n: NeedleShape): number {
  return dataOffset(n.key.length, n.metaLen ?? 0);
}

/** UTF-8 byte length of a meta field (content type, file name). */
export function metaBytes(s: string | undefined): number {
  return s ? utf8.encode(s).length : 0;
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

/** Encodes header + key (+ meta for v2): 40 + keyLen (+ ctLen + fnLen) bytes. */
export function encodeHeader(h: NeedleHeader): Uint8Array {
  const keyLen = h.key.length;
  if (keyLen < 1 || keyLen > MAX_KEY_LENGTH) throw new RangeError(`key length ${keyLen} out of range`);
  const v2 = (h.flags & FLAG_V2) !== 0;
  const ct = utf8.encode(h.contentType ?? '');
  const fn = utf8.encode(h.fileName ?? '');
  if (!v2 && ct.length + fn.length > 0) throw new RangeError('content type and file name need FLAG_V2');
  const slot = h.keySlot ?? 0;
  const sealed = (h.flags & FLAG_ENCRYPTED) !== 0;
  if (sealed !== slot > 0 || slot > MAX_KEY_SLOT || (sealed && (!v2 || (h.flags & FLAG_DELETED) !== 0))) {
    throw new RangeError('FLAG_ENCRYPTED needs FLAG_V2, no FLAG_DELETED and a key slot in 1..65535');
  }
  if (ct.length > MAX_META_FIELD || fn.length > MAX_META_FIELD) {
    throw new RangeError(`content type / file name over ${MAX_META_FIELD} bytes`);
  }
  const metaAt = NEEDLE_HEADER_SIZE + keyLen;
  const buf = new Uint8Array(metaAt + ct.length + fn.length);
  const view = new DataView(buf.buffer);
  view.setUint32(0, NEEDLE_MAGIC, true);
  buf[4] = h.flags;
  buf[5] = keyLen;
  view.setUint16(6, slot, true);
  view.setBigUint64(8, BigInt.asUintN(64, h.cookie), true);
  writeU64(view, 16, h.dataSize);
  writeU64(view, 24, Math.max(0, Math.floor(h.writtenAtMs)));
  buf[32] = ct.length;
  buf[33] = fn.length;
  for (let i = 0; i < keyLen; i++) buf[NEEDLE_HEADER_SIZE + i] = h.key.charCodeAt(i);
  buf.set(ct, metaAt);
  buf.set(fn, metaAt + ct.length);
  let crc = crc32c(buf, 0, 0, 36);
  crc = crc32c(buf, crc, NEEDLE_HEADER_SIZE, buf.length);
  view.setUint32(36, crc, true);
  return buf;
}

/**
 * Decodes and validates header + key (+ meta) from `buf` starting at `at`. If
 * `buf` lacks bytes the header needs, a ChecksumError('truncated') is thrown
 * (read MAX_HEADER_LENGTH bytes to be sure to have them). Never throws anything
 * else.
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
  const ctLen = buf[at + 32]!;
  const fnLen = buf[at + 33]!;
  const metaAt = at + NEEDLE_HEADER_SIZE + keyLen;
  const end = metaAt + ctLen + fnLen;
  if (buf.length < end) {
    throw new ChecksumError('needle key is truncated', 'truncated', vid, off);
  }
  let crc = crc32c(buf, 0, at, at + 36);
  crc = crc32c(buf, crc, at + NEEDLE_HEADER_SIZE, end);
  if (view.getUint32(36, true) !== crc) {
    throw new ChecksumError('needle header checksum mismatch', 'header-checksum', vid, off);
  }
  const flags = buf[at + 4]!;
  const v2 = (flags & FLAG_V2) !== 0;
  const dataSize = readSafeU64(view, 16);
  const writtenAtMs = readSafeU64(view, 24);
  const deleted = (flags & FLAG_DELETED) !== 0;
  const sealed = (flags & FLAG_ENCRYPTED) !== 0;
  const keySlot = view.getUint16(6, true);
  if (
    keyLen === 0 ||
    (flags & ~KNOWN_FLAGS) !== 0 ||
    sealed !== keySlot > 0 ||
    (sealed && !v2) ||
    view.getUint16(34, true) !== 0 ||
    (!v2 && ctLen + fnLen !== 0) ||
    (v2 && deleted) ||
    !(dataSize <= MAX_NEEDLE_DATA_SIZE) ||
    Number.isNaN(writtenAtMs) ||
    (deleted && dataSize !== 0)
  ) {
    throw new ChecksumError('needle header has invalid fields', 'header-field', vid, off);
  }
  let key = '';
  for (let i = 0; i < keyLen; i++) key += String.fromCharCode(buf[at + NEEDLE_HEADER_SIZE + i]!);
  let contentType = '';
  let fileName = '';
  if (ctLen + fnLen > 0) {
    try {
      contentType = utf8Strict.decode(buf.subarray(metaAt, metaAt + ctLen));
      fileName = utf8Strict.decode(buf.subarray(metaAt + ctLen, end));
    } catch {
      throw new ChecksumError('needle meta is not UTF-8', 'header-field', vid, off);
    }
  }
  return {
    flags,
    key,
    cookie: view.getBigUint64(8, true),
    dataSize,
    writtenAtMs,
    contentType,
    fileName,
    metaLen: ctLen + fnLen,
    ...(sealed ? { keySlot } : {}),
  };
}

/** What an encrypted needle's footer records beyond the v2 fields (internal/store/crypto). */
export interface SealFacts {
  /** CRC32C of the plaintext (what clients are told); the footer's data CRC covers the ciphertext. */
  contentCrc: number;
  nonce: Uint8Array;
  tag: Uint8Array;
}

/**
 * Footer plus zero padding for a needle of this shape. v2 footers carry the
 * content's SHA-256 (32 bytes, required) and a CRC32C of the footer itself;
 * with `sealed` (FLAG_ENCRYPTED) also the content CRC, the GCM nonce and tag.
 * `dataCrc` is the CRC32C of the bytes stored in the data region.
 */
export function encodeFooter(
  dataCrc: number,
  keyLength: number,
  dataSize: number,
  v2?: { sha256: Uint8Array; metaLen: number; sealed?: SealFacts },
): Uint8Array {
  const metaLen = v2?.metaLen ?? 0;
  const sealed = v2?.sealed;
  const flags = v2 ? FLAG_V2 | (sealed ? FLAG_ENCRYPTED : 0) : 0;
  const used = NEEDLE_HEADER_SIZE + keyLength + metaLen + dataSize;
  const buf = new Uint8Array(needleLength(keyLength, dataSize, flags, metaLen) - used);
  const view = new DataView(buf.buffer);
  view.setUint32(0, FOOTER_MAGIC, true);
  view.setUint32(4, dataCrc >>> 0, true);
  if (v2) {
    if (v2.sha256.length !== 32) throw new RangeError('a v2 footer needs a 32-byte SHA-256');
    buf.set(v2.sha256, 8);
    let crcAt = 40;
    if (sealed) {
      if (sealed.nonce.length !== NONCE_SIZE || sealed.tag.length !== TAG_SIZE) {
        throw new RangeError(`a sealed footer needs a ${NONCE_SIZE}-byte nonce and a ${TAG_SIZE}-byte tag`);
      }
      view.setUint32(40, sealed.contentCrc >>> 0, true);
      buf.set(sealed.nonce, 44);
      buf.set(sealed.tag, 44 + NONCE_SIZE);
      crcAt = 44 + NONCE_SIZE + TAG_SIZE;
    }
    view.setUint32(crcAt, crc32c(buf, 0, 0, crcAt), true);
  }
  return buf;
}

export interface NeedleFooter {
  /** CRC32C of the content (the plaintext of an encrypted needle): what clients are told. */
  crc32c: number;
  /** CRC32C of the bytes in the data region (equals crc32c unless encrypted). */
  storedCrc: number;
  /** SHA-256 of the content (v2 footers only). */
  sha256?: Uint8Array;
  /** Encrypted needles: the GCM nonce and tag. */
  nonce?: Uint8Array;
  tag?: Uint8Array;
}

/**
 * Validates the footer (magic; for v2 also its own CRC) at `buf[at..]` of a
 * needle with `flags` and returns what it records.
 */
export function decodeFooterFull(
  buf: Uint8Array,
  at = 0,
  where?: { volumeId?: number; offset?: number },
  flags = 0,
): NeedleFooter {
  const size = footerSize(flags);
  if (buf.length - at < size) {
    throw new ChecksumError('needle footer is truncated', 'truncated', where?.volumeId, where?.offset);
  }
  const view = new DataView(buf.buffer, buf.byteOffset + at, size);
  if (view.getUint32(0, true) !== FOOTER_MAGIC) {
    throw new ChecksumError('needle footer magic is wrong', 'footer-magic', where?.volumeId, where?.offset);
  }
  const crc = view.getUint32(4, true);
  if (size === NEEDLE_FOOTER_SIZE) return { crc32c: crc, storedCrc: crc };
  const crcAt = size - 4;
  if (view.getUint32(crcAt, true) !== crc32c(buf, 0, at, at + crcAt)) {
    throw new ChecksumError(
      'needle footer checksum mismatch',
      'footer-checksum',
      where?.volumeId,
      where?.offset,
    );
  }
  const sha256 = buf.slice(at + 8, at + 40);
  if (size === NEEDLE_FOOTER_SIZE_V2) return { crc32c: crc, storedCrc: crc, sha256 };
  return {
    crc32c: view.getUint32(40, true),
    storedCrc: crc,
    sha256,
    nonce: buf.slice(at + 44, at + 44 + NONCE_SIZE),
    tag: buf.slice(at + 44 + NONCE_SIZE, at + crcAt),
  };
}

/** Validates the footer and returns the CRC32C of the bytes stored in the data region. */
export function decodeFooter(
  buf: Uint8Array,
  at = 0,
  where?: { volumeId?: number; offset?: number },
  flags = 0,
): number {
  return decodeFooterFull(buf, at, where, flags).storedCrc;
}

/**
 * Encodes a whole needle (tests, benchmarks, tombstones). With FLAG_V2 in
 * `h.flags` the footer records `sha256` (required then).
 */
export function encodeNeedle(
  h: Omit<NeedleHeader, 'dataSize' | 'metaLen'>,
  data: Uint8Array,
  sha256?: Uint8Array,
): Uint8Array {
  const header = encodeHeader({ ...h, dataSize: data.length });
  const metaLen = header.length - NEEDLE_HEADER_SIZE - h.key.length;
  let v2: { sha256: Uint8Array; metaLen: number } | undefined;
  if ((h.flags & FLAG_V2) !== 0) {
    if (!sha256) throw new RangeError('a v2 needle needs its SHA-256');
    v2 = { sha256, metaLen };
  }
  const footer = encodeFooter(crc32c(data), h.key.length, data.length, v2);
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
  /** SHA-256 recorded in a v2 footer (not recomputed here). */
  sha256?: Uint8Array;
  length: number;
}

/**
 * Parses and fully validates the needle at `buf[at..]` (framing, header CRC,
 * footer magic and CRC, data CRC). Throws only ChecksumError; never loops.
 */
export function parseNeedle(buf: Uint8Array, at = 0): ParsedNeedle {
  const header = decodeHeader(buf, at);
  const length = lengthOf(header);
  if (buf.length - at < length) throw new ChecksumError('needle is truncated', 'truncated');
  const start = at + dataOffsetOf(header);
  const data = buf.subarray(start, start + header.dataSize);
  const foot = decodeFooterFull(buf, start + header.dataSize, undefined, header.flags);
  if (crc32c(data) !== foot.storedCrc) {
    throw new ChecksumError('needle data checksum mismatch', 'data-checksum');
  }
  return foot.sha256
    ? { header, data, crc32c: foot.crc32c, sha256: foot.sha256, length }
    : { header, data, crc32c: foot.crc32c, length };
}
