import { crc32c } from '../../../internal/store/crc32c.js';

/**
 * The needle encoder as it was before format v2 (kept verbatim for tests):
 * 40-byte header, key, data, 8-byte footer (magic + data CRC32C), padding.
 * Tests write needles with it to prove stores still load v1 volumes.
 */
export function encodeV1Needle(
  h: { key: string; cookie: bigint; deleted: boolean; writtenAtMs: number },
  data: Uint8Array,
): Uint8Array {
  const keyLen = h.key.length;
  const unpadded = 40 + keyLen + data.length + 8;
  const buf = new Uint8Array(unpadded + ((8 - (unpadded % 8)) % 8));
  const view = new DataView(buf.buffer);
  view.setUint32(0, 0x4e4b5948, true);
  buf[4] = h.deleted ? 1 : 0;
  buf[5] = keyLen;
  view.setBigUint64(8, BigInt.asUintN(64, h.cookie), true);
  view.setBigUint64(16, BigInt(data.length), true);
  view.setBigUint64(24, BigInt(h.writtenAtMs), true);
  for (let i = 0; i < keyLen; i++) buf[40 + i] = h.key.charCodeAt(i);
  let crc = crc32c(buf, 0, 0, 36);
  crc = crc32c(buf, crc, 40, 40 + keyLen);
  view.setUint32(36, crc, true);
  buf.set(data, 40 + keyLen);
  view.setUint32(40 + keyLen + data.length, 0x464b5948, true);
  view.setUint32(44 + keyLen + data.length, crc32c(data), true);
  return buf;
}
