/**
 * Reads: `openRead` (verified streaming of a blob, optionally a range) and
 * `stat` (a needle's facts without its content).
 *
 * - Cookie 0 / undefined skips the cookie check (callers that authorized the read otherwise:
 *   a gateway after a token's blob:read, replication, stores, operators). A read that carries
 *   a cookie (a capability URL's, a signed URL's) gets one answer for a wrong cookie, a
 *   deleted blob and an unknown id, NotFound `blob … is not on this store`: no existence oracle.
 * - Reads verify the CRC32C of the whole needle data, also for range reads
 *   (the bytes outside the range are read but not emitted); the last chunk is
 *   held back until the checksum matched, so a stream never completes with
 *   corrupt data: it fails with ChecksumError instead.
 * - Encrypted needles (FLAG_ENCRYPTED) are decrypted as they stream; the
 *   AES-GCM tag, checked at the end, replaces the CRC check (it authenticates
 *   the ciphertext, the header and the key; a mismatch is a ChecksumError
 *   'data-auth', DATA_LOSS, like a CRC mismatch).
 */
import { createHash } from 'node:crypto';
import { crc32c } from './crc32c.js';
import type { NeedleOpener } from './crypto/needle-seal.js';
import { ChecksumError, InvalidArgumentError, NotFoundError } from './errors.js';
import { readFully } from './fs-util.js';
import { dataOffsetOf, FLAG_ENCRYPTED, type NeedleFooter } from './needle.js';
import type { NeedleFactsInfo, Resolved, StoreCore } from './store-core.js';

export interface BlobReader extends NeedleFactsInfo {
  /** Streams [offset, offset + length) of the content, verifying the whole needle's CRC32C. */
  stream(offset?: number, length?: number, chunkSize?: number): AsyncIterable<Uint8Array>;
}

export interface StatOptions {
  /** Expected cookie; 0 / undefined skips the check. */
  cookie?: bigint;
  /** Answer for a tombstone too instead of NotFoundError. */
  includeDeleted?: boolean;
}

const absent = (blobId: string) => new NotFoundError(`blob ${blobId} is not on this store`);

/** True when no cookie is expected (0 / undefined) or it is the needle's. */
function cookieMatches(expected: bigint | undefined, stored: bigint): boolean {
  return expected === undefined || expected === 0n || expected === stored;
}

/** A tombstone: said as such to cookie-less (internal) callers, as absent to a cookie's holder. */
function deletedError(blobId: string, cookie: bigint | undefined): NotFoundError {
  return cookie === undefined || cookie === 0n
    ? new NotFoundError(`blob ${blobId} was deleted`)
    : absent(blobId);
}

/**
 * The facts of the newest needle of `blobId`. NotFoundError when there is none,
 * when it is a tombstone (unless `includeDeleted`), or when a non-zero cookie
 * differs. ChecksumError when its header or footer is unreadable.
 */
export async function statNeedle(
  core: StoreCore,
  blobId: string,
  o: StatOptions = {},
): Promise<NeedleFactsInfo> {
  core.checkOpen();
  core.checkId(blobId);
  const r = await core.resolve(blobId);
  if (!r) throw absent(blobId);
  try {
    if (!cookieMatches(o.cookie, r.header.cookie)) throw absent(blobId);
    if (r.loc.deleted && !o.includeDeleted) throw deletedError(blobId, o.cookie);
    return await core.factsOf(r);
  } finally {
    r.file.release();
  }
}

/** Opens a blob for reading. NotFoundError when absent, deleted, or the cookie differs. */
export async function openRead(core: StoreCore, blobId: string, cookie?: bigint): Promise<BlobReader> {
  core.checkOpen();
  core.checkId(blobId);
  const r = await core.resolve(blobId);
  if (!r) throw absent(blobId);
  let facts: NeedleFactsInfo;
  let foot: NeedleFooter;
  try {
    if (!cookieMatches(cookie, r.header.cookie)) throw absent(blobId);
    if (r.loc.deleted) throw deletedError(blobId, cookie);
    foot = await core.readFooter(r);
    facts = core.factsWith(r, foot);
  } finally {
    r.file.release();
  }
  const size = facts.size;
  return {
    ...facts,
    stream: (offset = 0, length?: number, chunkSize?: number) =>
      streamNeedle(core, r, foot, offset, length ?? size - offset, chunkSize ?? core.readChunkSize),
  };
}

/**
 * Whether the live needle of `blobId` reads back intact: its header and footer
 * decode, its data matches the stored CRC32C and, for a v2 needle, the stored
 * SHA-256 (what a read and scrub check). Reads the whole needle; the caller
 * bounds how often (Replicate keep_stamp: only on an equal stamp).
 */
export async function needleIntact(core: StoreCore, blobId: string): Promise<boolean> {
  try {
    const reader = await openRead(core, blobId);
    const h = createHash('sha256');
    for await (const c of reader.stream()) h.update(c);
    return !reader.sha256 || Buffer.from(reader.sha256).equals(h.digest());
  } catch (err) {
    if (err instanceof ChecksumError) return false;
    throw err;
  }
}

/** A decrypting opener for an encrypted needle, undefined for a plaintext one. */
function openerFor(core: StoreCore, r: Resolved, foot: NeedleFooter): NeedleOpener | undefined {
  return (r.header.flags & FLAG_ENCRYPTED) !== 0 ? core.opener(r.vol, r.header, foot, r.loc) : undefined;
}

async function* streamNeedle(
  core: StoreCore,
  r: Resolved,
  foot: NeedleFooter,
  start: number,
  length: number,
  chunkSize: number,
): AsyncGenerator<Uint8Array> {
  const size = r.header.dataSize;
  if (
    !Number.isSafeInteger(start) ||
    !Number.isSafeInteger(length) ||
    start < 0 ||
    length < 0 ||
    start + length > size
  ) {
    throw new InvalidArgumentError(`range [${start}, ${start}+${length}) is outside the ${size}-byte blob`);
  }
  if (r.whole) {
    // The lookup already read the whole needle: verify and serve it from memory.
    const from = dataOffsetOf(r.header);
    let data = r.whole.subarray(from, from + size);
    const opener = openerFor(core, r, foot);
    if (opener) {
      data = opener.update(data);
      if (!opener.final()) throw core.authFailed(r.header.key, r.loc);
    } else {
      const crc = crc32c(data, 0);
      if (crc !== foot.storedCrc) throw core.corrupt(r.header.key, r.loc, crc, foot.storedCrc);
    }
    const step = Math.max(4096, Math.min(chunkSize, 16 << 20));
    for (let pos = start; pos < start + length; pos += step) {
      yield data.subarray(pos, Math.min(start + length, pos + step));
    }
    return;
  }
  let file = r.file;
  let loc = r.loc;
  let found = r;
  if (!file.acquire()) {
    // Compaction replaced the file since openRead: find the needle's new place.
    const again = await core.resolve(r.header.key);
    if (!again) throw new NotFoundError(`blob ${r.header.key} is no longer on this store`);
    if (again.loc.deleted || again.header.cookie !== r.header.cookie || again.header.dataSize !== size) {
      again.file.release();
      throw new NotFoundError(`blob ${r.header.key} is no longer on this store`);
    }
    file = again.file;
    loc = again.loc;
    found = again;
    // Compaction re-encrypted it: new key slot, nonce and tag.
    foot = await core.readFooter(again).catch((err: unknown) => {
      again.file.release();
      throw err;
    });
  }
  try {
    const opener = openerFor(core, found, foot);
    const base = loc.offset + dataOffsetOf(found.header);
    const end = start + length;
    const step = Math.max(4096, Math.min(chunkSize, 16 << 20));
    let scratch: Uint8Array | undefined;
    let crc = 0;
    let pending: Uint8Array | undefined;
    for (let pos = 0; pos < size; ) {
      const n = Math.min(step, size - pos);
      const emits = pos < end && pos + n > start;
      let buf: Uint8Array;
      // Decryption makes a fresh buffer anyway: ciphertext goes to the reused scratch one.
      if (emits && !opener) buf = new Uint8Array(n);
      else {
        if (!scratch || scratch.length < n) scratch = new Uint8Array(step);
        buf = scratch.subarray(0, n);
      }
      const got = await readFully(file.handle, buf, base + pos, n);
      if (got < n) {
        throw new ChecksumError(
          `needle of ${r.header.key} is truncated`,
          'truncated',
          loc.volumeId,
          loc.offset,
        );
      }
      if (opener) {
        // Decrypting every chunk keeps GCM's counter in step; only emitted ones are kept.
        const plain = opener.update(buf);
        if (emits) buf = plain;
      } else crc = crc32c(buf, crc);
      if (emits) {
        const s = Math.max(start, pos) - pos;
        const e = Math.min(end, pos + n) - pos;
        if (pending) yield pending;
        pending = buf.subarray(s, e);
      }
      pos += n;
    }
    if (opener) {
      if (!opener.final()) throw core.authFailed(r.header.key, loc);
    } else if (crc !== foot.storedCrc) throw core.corrupt(r.header.key, loc, crc, foot.storedCrc);
    if (pending) yield pending;
  } finally {
    file.release();
  }
}
