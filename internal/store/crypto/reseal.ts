/**
 * Compaction's re-encryption of one needle: read it from the old volume file,
 * verify it (GCM tag for an encrypted needle, data CRC32C for a plaintext one),
 * and write it to the compacted file sealed under the volume's new key slot
 * with a fresh nonce. Plaintext needles (v1, v2) become encrypted v2 needles,
 * which is how a volume written before KEK_FILE was set gets encrypted.
 *
 * A needle that does not verify is NOT re-sealed (that would give corrupt
 * bytes a valid tag): `undefined` tells the caller to copy its raw bytes, so
 * scrub still reports it and repair replaces it. Memory: one chunk.
 */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { crc32c } from '../crc32c.js';
import { readFully } from '../fs-util.js';
import type { IndexRecord } from '../index-file.js';
import {
  dataOffsetOf,
  decodeFooterFull,
  decodeHeader,
  encodeFooter,
  encodeHeader,
  FLAG_ENCRYPTED,
  FLAG_V2,
  footerSize,
  MAX_HEADER_LENGTH,
  type NeedleHeader,
  needleLength,
} from '../needle.js';
import { NeedleOpener, NeedleSealer, needleAad } from './needle-seal.js';
import type { VolumeKeys } from './volume-keys.js';

const CHUNK = 1 << 20;

export interface Resealed {
  /** The record of the new needle (offset left to the caller). */
  record: IndexRecord;
  /** Bytes it takes in the new file. */
  length: number;
}

/**
 * Re-seals the needle `rec` read from `src` into `write(bytes, position)` at
 * `at`, under `keys`' slot `slot`. Undefined when the needle does not verify
 * (the caller copies it raw); I/O errors throw.
 */
export async function resealNeedle(
  src: FileHandle,
  rec: IndexRecord,
  keys: VolumeKeys,
  slot: number,
  write: (bytes: Uint8Array, position: number) => Promise<void>,
  at: number,
): Promise<Resealed | undefined> {
  const dek = keys.dek(slot);
  if (!dek) throw new Error(`volume ${keys.volumeId} has no key slot ${slot}`);
  let h: NeedleHeader;
  let foot: ReturnType<typeof decodeFooterFull>;
  const oldData = rec.offset + dataOffsetOf(rec);
  try {
    const head = new Uint8Array(MAX_HEADER_LENGTH);
    h = decodeHeader(head.subarray(0, await readFully(src, head, rec.offset)));
    if (h.key !== rec.key || h.dataSize !== rec.dataSize || h.flags !== rec.flags) return undefined;
    const fb = new Uint8Array(footerSize(h.flags));
    foot = decodeFooterFull(
      fb.subarray(0, await readFully(src, fb, oldData + h.dataSize)),
      0,
      undefined,
      h.flags,
    );
  } catch {
    return undefined; // unreadable header or footer: raw copy, scrub reports it
  }
  let opener: NeedleOpener | undefined;
  if ((h.flags & FLAG_ENCRYPTED) !== 0) {
    const old = keys.dek(h.keySlot ?? 0);
    if (!old || !foot.nonce || !foot.tag) return undefined;
    opener = new NeedleOpener(old, needleAad(h), foot.nonce, foot.tag);
  }
  const flags = FLAG_V2 | FLAG_ENCRYPTED;
  const header = encodeHeader({ ...h, flags, keySlot: slot });
  const metaLen = h.metaLen ?? 0;
  const sealer = new NeedleSealer(dek, header);
  await write(header, at);
  // v1 needles have no SHA-256: compute it (the new footer needs one).
  const sha = foot.sha256 ? undefined : createHash('sha256');
  const buf = new Uint8Array(CHUNK);
  let oldCrc = 0;
  let contentCrc = 0;
  let newCrc = 0;
  let dst = at + header.length;
  for (let done = 0; done < h.dataSize; ) {
    const n = Math.min(CHUNK, h.dataSize - done);
    const got = await readFully(src, buf, oldData + done, n);
    if (got < n) return undefined;
    const raw = buf.subarray(0, n);
    oldCrc = crc32c(raw, oldCrc);
    const plain = opener ? opener.update(raw) : raw;
    contentCrc = crc32c(plain, contentCrc);
    sha?.update(plain);
    const ct = sealer.update(plain);
    newCrc = crc32c(ct, newCrc);
    await write(ct, dst);
    dst += n;
    done += n;
  }
  if (oldCrc !== foot.storedCrc || (opener && !opener.final())) return undefined;
  const footer = encodeFooter(newCrc, h.key.length, h.dataSize, {
    sha256: foot.sha256 ?? new Uint8Array(sha!.digest()),
    metaLen,
    sealed: { contentCrc, nonce: sealer.nonce, tag: sealer.final() },
  });
  await write(footer, dst);
  return {
    record: { ...rec, flags, metaLen },
    length: needleLength(h.key.length, h.dataSize, flags, metaLen),
  };
}
