/**
 * Volume superblock: the first 64 bytes of every `<vid>.dat` (little-endian).
 *
 *   0  magic u32 "HYKV"     4  version u16     6  reserved u16
 *   8  volumeId u32        12  generation u32 (bumped by each compaction)
 *  16  createdAtMs u64     24..60 reserved (zero)
 *  60  crc32c u32 of bytes [0, 60)
 */
import { crc32c } from './crc32c.js';
import { ChecksumError } from './errors.js';

export const SUPERBLOCK_SIZE = 64;
export const SUPERBLOCK_MAGIC = 0x564b5948; // "HYKV"
export const FORMAT_VERSION = 1;

export interface Superblock {
  volumeId: number;
  generation: number;
  createdAtMs: number;
}

export function encodeSuperblock(sb: Superblock): Uint8Array {
  const buf = new Uint8Array(SUPERBLOCK_SIZE);
  const view = new DataView(buf.buffer);
  view.setUint32(0, SUPERBLOCK_MAGIC, true);
  view.setUint16(4, FORMAT_VERSION, true);
  view.setUint32(8, sb.volumeId, true);
  view.setUint32(12, sb.generation, true);
  view.setBigUint64(16, BigInt(Math.max(0, Math.floor(sb.createdAtMs))), true);
  view.setUint32(60, crc32c(buf, 0, 0, 60), true);
  return buf;
}

/** Throws ChecksumError('superblock') when the bytes are not a valid superblock. */
export function decodeSuperblock(buf: Uint8Array): Superblock {
  if (buf.length < SUPERBLOCK_SIZE) throw new ChecksumError('superblock is truncated', 'superblock');
  const view = new DataView(buf.buffer, buf.byteOffset, SUPERBLOCK_SIZE);
  if (view.getUint32(0, true) !== SUPERBLOCK_MAGIC) {
    throw new ChecksumError('superblock magic is wrong (not a volume file)', 'superblock');
  }
  if (view.getUint32(60, true) !== crc32c(buf, 0, 0, 60)) {
    throw new ChecksumError('superblock checksum mismatch', 'superblock');
  }
  const version = view.getUint16(4, true);
  if (version !== FORMAT_VERSION) {
    throw new ChecksumError(`unsupported volume format version ${version}`, 'superblock');
  }
  return {
    volumeId: view.getUint32(8, true),
    generation: view.getUint32(12, true),
    createdAtMs: Number(view.getBigUint64(16, true)),
  };
}
