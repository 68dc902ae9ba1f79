/**
 * Writes: `beginWrite` reserves a needle at a volume tail and writes its
 * header; the returned writer streams the content to its final offset while
 * computing CRC32C and SHA-256 (node:crypto, streaming), then `commit` writes
 * the v2 footer and hands the index record to the volume's group committer.
 *
 * Rules (the gRPC layer relies on these):
 * - A write is visible and acknowledged only after its needle and its index
 *   record are fsync'd.
 * - Idempotency: when the id's newest needle here is live, the write stores
 *   nothing; at commit, the same size and SHA-256 succeed (`existed`) and answer
 *   the ORIGINAL needle's cookie and stamp, whatever cookie was sent (a retried
 *   upload keeps its cookie); other content → AlreadyExistsError('different-content').
 *   A cold stub compares as the erasure-coded blob it stands for (the size and
 *   SHA-256 it records): an id is write-once whatever tier its bytes are in.
 * - A write over a tombstone is taken: the new needle is stamped above it
 *   (re-upload after delete; older replicas elsewhere stay deleted).
 * - `stamp` alone: the needle gets that stamp, unless the id's current record
 *   here is not older, in which case it is stamped just above that record (see
 *   docs/volume-format.md, Stamp order).
 * - `keepStamp` (Replicate keep_stamp, and writes forwarded by the first store
 *   with their stamp): a record here with a newer stamp, or an equal one whose
 *   data is intact (CRC32C, SHA-256 for v2), is kept (`kept`, nothing written);
 *   an older one is superseded by the copy with the given stamp and cookie; a
 *   DAMAGED needle with an equal stamp (data, or a header that does not
 *   decode) is superseded by the copy stamped 1 ms above it (a strictly
 *   greater stamp, so load order and convergence hold).
 */
import { createHash } from 'node:crypto';
import { crc32c } from './crc32c.js';
import { NeedleSealer } from './crypto/needle-seal.js';
import { AlreadyExistsError, ChecksumError, InvalidArgumentError, isNoSpaceError } from './errors.js';
import type { IndexRecord } from './index-file.js';
import {
  dataOffset,
  encodeFooter,
  encodeHeader,
  FLAG_ENCRYPTED,
  FLAG_V2,
  footerSize,
  MAX_META_FIELD,
  metaBytes,
  needleLength,
} from './needle.js';
import { MAX_STAMP } from './needle-map.js';
import { ioError, type NeedleFactsInfo, type Resolved, type StoreCore } from './store-core.js';
import { needleIntact, openRead, statNeedle } from './store-read.js';
import { decodeStub, isStub } from './stub-content.js';
import type { Volume } from './volume.js';

export interface WriteResult {
  volumeId: number;
  offset: number;
  size: number;
  crc32c: number;
  sha256: Uint8Array;
  /** The cookie stored (the original needle's on an idempotent retry). */
  cookie: bigint;
  /** The stored needle's stamp (the original needle's on an idempotent retry). */
  writtenAtMs: number;
  /** True when the blob already existed with identical content (idempotent retry), or was kept (keepStamp). */
  existed: boolean;
  /** keepStamp only: a needle here was not older, so nothing was copied. */
  kept: boolean;
}

export interface WriteOptions {
  /** MIME type kept in the needle (≤ 255 UTF-8 bytes, no control characters). */
  contentType?: string;
  /** Original file name kept in the needle (≤ 255 UTF-8 bytes, no control characters). */
  fileName?: string;
  /** Stamp chosen elsewhere (ms since the epoch, 1 .. 2^48-1): a forwarded write or a copy. */
  stamp?: number;
  /** Copy verbatim (Replicate keep_stamp): needs `stamp`; a not-older needle here is kept. */
  keepStamp?: boolean;
}

export interface NeedleWriter {
  readonly blobId: string;
  readonly size: number;
  /** The cookie the write will answer: the one sent, or the existing needle's (idempotent candidate). */
  readonly cookie: bigint;
  /** The stamp the write will answer: the new needle's, or the existing needle's. */
  readonly writtenAtMs: number;
  /** The id has a live needle here: commit compares content and stores nothing. */
  readonly existing: boolean;
  /** keepStamp: a not-older needle is here; the content may be skipped, commit answers it. */
  readonly kept: boolean;
  /** Appends the next bytes; more than the declared size → InvalidArgumentError. */
  write(chunk: Uint8Array): Promise<void>;
  /** Makes the blob durable and visible; short stream or SHA-256 mismatch → InvalidArgumentError, nothing stored. */
  commit(expectedSha256?: Uint8Array): Promise<WriteResult>;
  /** Discards the write (idempotent). */
  abort(): Promise<void>;
}

/**
 * A new needle of at most this many bytes has its data and footer assembled in
 * memory and written with one positioned write at commit, instead of one per
 * chunk and one for the footer: each is a libuv threadpool round trip, ~25 µs
 * of CPU for 1 KiB (docs/benchmarks.md, "Wave 5"). The header is still written
 * at once: it gives the reservation's length to a recovery tail scan, which
 * skips an aborted needle by it. The fdatasync is unchanged. Bounded: one such
 * buffer per write that has received data (allocated at its first chunk, so a
 * stream that sends nothing holds none), dropped when the write ends.
 */
const COALESCE_MAX = 128 * 1024;

/**
 * A coalesced sealed needle keeps the cipher's output buffers as they come
 * (fresh ones, owned by the writer) and writes them with the footer in one
 * `pwritev` at commit, instead of copying them into a tail buffer: per 64 KiB
 * needle that saves a 64 KiB allocation (its page faults and the GC pressure
 * of its external memory) and a 64 KiB copy. Past this many pieces (a client
 * sending tiny chunks) the pieces go into a tail buffer after all, so the
 * memory per write stays bounded by the needle's size.
 */
const MAX_SEALED_PIECES = 16;

// C0 controls and DEL: never in a content type or a file name (they end up in HTTP headers).
// biome-ignore lint/suspicious/noControlCharactersInRegex: that is the point
const CONTROL = /[\u0000-\u001f\u007f]/;

/** Problem with a content type or file name, or undefined when valid. */
export function checkMetaField(what: string, value: string | undefined): string | undefined {
  if (!value) return undefined;
  const n = metaBytes(value);
  if (n > MAX_META_FIELD) return `${what} is ${n} bytes of UTF-8, more than ${MAX_META_FIELD}`;
  if (CONTROL.test(value)) return `${what} contains a control character`;
  return undefined;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * What a keepStamp copy stamped `given` does with the id's current record here
 * stamped `current`: 'copy' when it is older, 'keep' when it is newer (or an
 * equal-stamp tombstone: no data to damage), 'verify' on an equal stamp of a
 * live needle: keep it when its data is intact, else replace it (the only case
 * that reads the needle, so a backfill over intact copies stays cheap).
 */
export function keepStampStep(current: number, given: number, deleted: boolean): 'copy' | 'keep' | 'verify' {
  if (current < given) return 'copy';
  if (current > given || deleted) return 'keep';
  return 'verify';
}

/**
 * keepStamp over a needle whose header does not decode (ChecksumError from the
 * lookup): the stamp the needle map holds for it (its index record's) when the
 * copy stamped `given` may supersede it — a live needle stamped older, or equal
 * (damaged, so replaced 1 ms above). Otherwise undefined and the error stands:
 * a damaged tombstone is never replaced by a live copy (no resurrection), nor
 * a newer needle by an older copy.
 */
function damagedHeaderStamp(
  core: StoreCore,
  blobId: string,
  given: number | undefined,
  err: unknown,
): number | undefined {
  if (!(err instanceof ChecksumError) || given === undefined) return undefined;
  const loc = core.map.lookup(blobId);
  if (!loc?.stamp || loc.deleted || loc.stamp > given) return undefined;
  return loc.stamp;
}

/**
 * Starts writing blob `blobId` of exactly `size` bytes. Holds the id's lock
 * until commit/abort (a concurrent writer of the same id waits).
 */
export async function beginWrite(
  core: StoreCore,
  blobId: string,
  cookie: bigint,
  size: number,
  opts: WriteOptions = {},
): Promise<NeedleWriter> {
  core.checkOpen();
  core.checkId(blobId);
  if (!Number.isSafeInteger(size) || size < 0)
    throw new InvalidArgumentError(`size must be a non-negative integer, got ${size}`);
  const max = core.maxBlobSize(blobId);
  if (size > max) {
    throw new InvalidArgumentError(
      `blob of ${size} bytes exceeds the largest blob this store takes (${max} bytes)`,
    );
  }
  const problem =
    checkMetaField('content type', opts.contentType) ?? checkMetaField('file name', opts.fileName);
  if (problem) throw new InvalidArgumentError(problem);
  const given = opts.stamp;
  if (given !== undefined && !(Number.isSafeInteger(given) && given >= 1 && given <= MAX_STAMP)) {
    throw new InvalidArgumentError(`stamp ${given} is outside 1..${MAX_STAMP} ms`);
  }
  if (opts.keepStamp && given === undefined) throw new InvalidArgumentError('keepStamp needs a stamp');
  const release = await core.locks.acquire(blobId);
  try {
    let existing: Resolved | undefined;
    let current: number | undefined;
    try {
      existing = await core.resolve(blobId);
      existing?.file.release();
      current = existing?.header.writtenAtMs;
    } catch (err) {
      current = opts.keepStamp ? damagedHeaderStamp(core, blobId, given, err) : undefined;
      if (current === undefined) throw err;
    }
    if (existing && opts.keepStamp && current !== undefined && given !== undefined) {
      const step = keepStampStep(current, given, existing.loc.deleted);
      if (step === 'keep' || (step === 'verify' && (await needleIntact(core, blobId)))) {
        return new BlobWriter(core, blobId, size, release, { kind: 'kept', existing });
      }
      // Older here, or damaged at an equal stamp: the copy supersedes it. In
      // the latter case stampFor puts it 1 ms above (docs/volume-format.md).
    }
    if (existing && !existing.loc.deleted && !opts.keepStamp) {
      return new BlobWriter(core, blobId, size, release, { kind: 'compare', existing });
    }
    // A new needle: the id is absent, deleted (the new needle supersedes the
    // tombstone), or older than a keepStamp copy.
    // With a keyring every volume has DEKs, so the length is known before the volume is.
    const flags = core.keyring ? FLAG_V2 | FLAG_ENCRYPTED : FLAG_V2;
    const metaLen = metaBytes(opts.contentType) + metaBytes(opts.fileName);
    const length = needleLength(blobId.length, size, flags, metaLen);
    const { vol, offset } = await core.reserveSpace(length);
    const stamp = core.stampFor(blobId, current, given);
    const keySlot = vol.keys?.current;
    const dek = core.keyring && keySlot !== undefined ? vol.keys?.dek(keySlot) : undefined;
    if (core.keyring && !dek) {
      vol.release(offset, length);
      vol.finish();
      throw new Error(`volume ${vol.id} has no data key although the store has a KEK`);
    }
    const header = encodeHeader({
      key: blobId,
      cookie,
      flags,
      dataSize: size,
      writtenAtMs: stamp,
      contentType: opts.contentType ?? '',
      fileName: opts.fileName ?? '',
      ...(dek ? { keySlot } : {}),
    });
    // AES-256-GCM over the data, the header bytes as authenticated data.
    const sealer = dek ? new NeedleSealer(dek, header) : undefined;
    const tailLength = length <= COALESCE_MAX ? length - dataOffset(blobId.length, metaLen) : undefined;
    try {
      await vol.writeDat(header, offset);
    } catch (err) {
      vol.finish();
      if (!isNoSpaceError(err)) vol.markBroken(`header write failed: ${(err as Error).message}`);
      throw ioError(err, `writing blob ${blobId}`);
    }
    return new BlobWriter(core, blobId, size, release, {
      kind: 'new',
      vol,
      offset,
      stamp,
      metaLen,
      cookie,
      flags,
      sealer,
      tailLength,
      pieces: tailLength !== undefined && sealer ? [] : undefined,
    });
  } catch (err) {
    release();
    throw err;
  }
}

/** Where a new needle goes. */
interface NewNeedle {
  kind: 'new';
  vol: Volume;
  offset: number;
  /** The needle's stamp (header and index record carry the same). */
  stamp: number;
  /** Content type + file name bytes after the key. */
  metaLen: number;
  cookie: bigint;
  /** FLAG_V2, with FLAG_ENCRYPTED when sealed. */
  flags: number;
  /** Encrypts the data (FLAG_ENCRYPTED). */
  sealer: NeedleSealer | undefined;
  /** Bytes of data and footer, assembled in `tail` and written at commit (needles of at most COALESCE_MAX bytes). */
  tailLength: number | undefined;
  /** Allocated at the first chunk kept in it (or at commit), dropped when the write ends. */
  tail?: Buffer | undefined;
  /**
   * Sealed needles of at most COALESCE_MAX bytes: the ciphertext pieces so far,
   * written with the footer in one call at commit (MAX_SEALED_PIECES; past it,
   * undefined and `tail` holds the data).
   */
  pieces: Uint8Array[] | undefined;
}

/** The id's live needle: compare content at commit, store nothing. */
interface Compare {
  kind: 'compare';
  existing: Resolved;
}

/** keepStamp found a not-older needle: skip the content, answer it. */
interface Kept {
  kind: 'kept';
  existing: Resolved;
}

/**
 * The live needle of `blobId` with its blob's size, CRC32C and SHA-256: from
 * its v2 footer, by reading a v1 needle's data (only when the sizes match), or
 * for a cold stub the facts the stub records (the erasure-coded blob's; CRC32C
 * 0, as Stat answers). Looked up afresh:
 * compaction may have moved it since beginWrite (the key lock keeps it current).
 */
async function liveWithDigest(
  core: StoreCore,
  blobId: string,
  size: number,
): Promise<{ facts: NeedleFactsInfo; size: number; crc32c: number; sha: Uint8Array | undefined }> {
  const reader = await openRead(core, blobId);
  if (isStub(reader)) {
    // A cold blob: its stub records the size and SHA-256 the full needle had.
    const stub = await decodeStub(blobId, reader, () => reader.stream());
    const sha = stub.sha256.length === 32 ? stub.sha256 : undefined;
    // The full needle's CRC32C is not kept (coldFacts): the stripe's shards carry their own.
    return { facts: reader, size: Number(stub.size), crc32c: 0, sha };
  }
  const own = { facts: reader, size: reader.size, crc32c: reader.crc32c };
  if (reader.sha256 || reader.size !== size) return { ...own, sha: reader.sha256 };
  const h = createHash('sha256');
  for await (const c of reader.stream()) h.update(c);
  return { ...own, sha: new Uint8Array(h.digest()) };
}

class BlobWriter implements NeedleWriter {
  private written = 0;
  /** CRC32C of the content (plaintext). */
  private crc = 0;
  /** CRC32C of the bytes stored (the ciphertext of a sealed needle). */
  private storedCrc = 0;
  private readonly sha = createHash('sha256');
  private done = false;
  private busy = false;
  readonly cookie: bigint;
  readonly writtenAtMs: number;
  readonly existing: boolean;
  readonly kept: boolean;

  constructor(
    private readonly core: StoreCore,
    readonly blobId: string,
    readonly size: number,
    private readonly unlock: () => void,
    private readonly plan: NewNeedle | Compare | Kept,
  ) {
    if (plan.kind === 'new') {
      this.cookie = plan.cookie;
      this.writtenAtMs = plan.stamp;
    } else {
      this.cookie = plan.existing.header.cookie;
      this.writtenAtMs = plan.existing.header.writtenAtMs;
    }
    this.existing = plan.kind === 'compare';
    this.kept = plan.kind === 'kept';
  }

  /** Ends the write; `stored` false gives a new needle's reservation back (nothing was appended). */
  private finishUp(stored: boolean): void {
    if (this.done) return;
    this.done = true;
    const p = this.plan;
    if (p.kind === 'new') {
      p.tail = undefined;
      if (!stored) p.vol.release(p.offset, needleLength(this.blobId.length, this.size, p.flags, p.metaLen));
      p.vol.finish();
    }
    this.unlock();
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.done) throw new InvalidArgumentError(`write of ${this.blobId} already finished`);
    if (this.busy) throw new InvalidArgumentError('write() calls must not overlap');
    if (this.written + chunk.length > this.size) {
      const n = this.written + chunk.length;
      await this.abort();
      throw new InvalidArgumentError(
        `received ${n} bytes for ${this.blobId}, more than the declared ${this.size}`,
      );
    }
    if (this.plan.kind === 'kept') {
      this.written += chunk.length; // nothing to keep: the needle here wins
      return;
    }
    this.busy = true;
    try {
      this.crc = crc32c(chunk, this.crc);
      this.sha.update(chunk);
      const p = this.plan;
      if (p.kind === 'new') {
        const dataAt = p.offset + dataOffset(this.blobId.length, p.metaLen);
        const at = dataAt + this.written;
        const out = p.sealer ? p.sealer.update(chunk) : chunk;
        if (p.sealer) this.storedCrc = crc32c(out, this.storedCrc);
        if (p.tailLength !== undefined) this.hold(p, out, at - dataAt, p.tailLength);
        else
          try {
            await p.vol.writeDat(out, at);
          } catch (err) {
            if (!isNoSpaceError(err)) p.vol.markBroken(`data write failed: ${(err as Error).message}`);
            await this.abort();
            throw ioError(err, `writing blob ${this.blobId}`);
          }
      }
      this.written += chunk.length;
    } finally {
      this.busy = false;
    }
  }

  /**
   * Keeps `out` (the bytes at `rel` of the data) for the write at commit: a
   * sealed needle's ciphertext as it is (the cipher's fresh buffer), else a copy
   * in the tail (the caller may reuse its chunk).
   */
  private hold(p: NewNeedle, out: Uint8Array, rel: number, tailLength: number): void {
    if (p.pieces && p.pieces.length < MAX_SEALED_PIECES) {
      p.pieces.push(out);
      return;
    }
    if (!p.tail) {
      p.tail = Buffer.allocUnsafeSlow(tailLength);
      let at = 0;
      for (const piece of p.pieces ?? []) {
        p.tail.set(piece, at);
        at += piece.length;
      }
      p.pieces = undefined;
    }
    p.tail.set(out, rel);
  }

  async commit(expectedSha256?: Uint8Array): Promise<WriteResult> {
    if (this.done) throw new InvalidArgumentError(`write of ${this.blobId} already finished`);
    if (this.busy) throw new InvalidArgumentError('commit() while a write() is pending');
    // From the footer on, the needle may be on disk (and its record in the index): keep its space.
    let appending = false;
    try {
      const p = this.plan;
      if (p.kind === 'kept') {
        const f = await statNeedle(this.core, this.blobId, { includeDeleted: true });
        return {
          volumeId: f.volumeId,
          offset: f.offset,
          size: f.size,
          crc32c: f.crc32c,
          sha256: f.sha256 ?? new Uint8Array(),
          cookie: f.cookie,
          writtenAtMs: f.writtenAtMs,
          existed: true,
          kept: true,
        };
      }
      if (this.written !== this.size) {
        throw new InvalidArgumentError(
          `stream for ${this.blobId} ended after ${this.written} of the declared ${this.size} bytes; nothing was stored`,
        );
      }
      const sha = new Uint8Array(this.sha.digest());
      if (expectedSha256 && expectedSha256.length > 0 && !bytesEqual(expectedSha256, sha)) {
        throw new InvalidArgumentError(
          `SHA-256 of the received ${this.blobId} does not match the declared one; nothing was stored`,
        );
      }
      if (p.kind === 'compare') return await this.compare(sha);
      appending = true;
      return await this.append(p, sha);
    } finally {
      this.finishUp(appending);
    }
  }

  private async compare(sha: Uint8Array): Promise<WriteResult> {
    const { facts, size, crc32c, sha: theirs } = await liveWithDigest(this.core, this.blobId, this.size);
    if (size !== this.size || !theirs || !bytesEqual(theirs, sha)) {
      throw new AlreadyExistsError(
        `blob ${this.blobId} already exists here with different content (size or SHA-256 differs); blob ids are immutable, write under a new id or delete it first`,
        'different-content',
      );
    }
    return {
      volumeId: facts.volumeId,
      offset: facts.offset,
      size: this.size,
      crc32c,
      sha256: sha,
      cookie: facts.cookie,
      writtenAtMs: facts.writtenAtMs,
      existed: true,
      kept: false,
    };
  }

  private async append(p: NewNeedle, sha: Uint8Array): Promise<WriteResult> {
    const { vol, offset, metaLen, stamp, sealer, flags } = p;
    const crc = this.crc;
    const footer = sealer
      ? encodeFooter(this.storedCrc, this.blobId.length, this.size, {
          sha256: sha,
          metaLen,
          sealed: { contentCrc: crc, nonce: sealer.nonce, tag: sealer.final() },
        })
      : encodeFooter(crc, this.blobId.length, this.size, { sha256: sha, metaLen });
    const dataAt = offset + dataOffset(this.blobId.length, metaLen);
    const footerAt = dataAt + this.size;
    if (p.tailLength !== undefined) await this.writeTail(p, footer, dataAt, footerAt);
    try {
      if (p.tailLength === undefined) await vol.writeDat(footer, footerAt);
      const length = needleLength(this.blobId.length, this.size, flags, metaLen);
      const record: IndexRecord = {
        key: this.blobId,
        flags,
        offset,
        dataSize: this.size,
        cookie: p.cookie,
        writtenAtMs: stamp,
        metaLen,
      };
      await vol.committer.submit({
        record,
        onDurable: () =>
          this.core.publish(vol, this.blobId, { volumeId: vol.id, offset, length, deleted: false, stamp }),
      });
    } catch (err) {
      // Never let a failed commit resurface through recovery: wipe the footer (best
      // effort). Should the needle come back anyway, the key's next record outstamps it.
      this.core.commitFailed(this.blobId, stamp);
      await vol.writeDat(new Uint8Array(footerSize(flags)), footerAt).catch(() => {});
      if (!isNoSpaceError(err)) vol.markBroken(`commit failed: ${(err as Error).message}`);
      throw ioError(err, `committing blob ${this.blobId}`);
    }
    return {
      volumeId: vol.id,
      offset,
      size: this.size,
      crc32c: crc,
      sha256: sha,
      cookie: p.cookie,
      writtenAtMs: stamp,
      existed: false,
      kept: false,
    };
  }

  /**
   * A small needle's data and footer in one write. When it fails, the needle has
   * no whole footer, so nothing of it can come back: the reservation is given back
   * as after a failed chunk write (an ENOSPC must not hold space until compaction).
   */
  private async writeTail(p: NewNeedle, footer: Uint8Array, dataAt: number, footerAt: number): Promise<void> {
    try {
      if (p.pieces) await p.vol.writevDat([...p.pieces, footer], dataAt);
      else {
        const tail = p.tail ?? Buffer.allocUnsafeSlow(p.tailLength ?? 0);
        tail.set(footer, footerAt - dataAt);
        await p.vol.writeDat(tail, dataAt);
      }
    } catch (err) {
      if (!isNoSpaceError(err)) p.vol.markBroken(`data write failed: ${(err as Error).message}`);
      this.finishUp(false);
      throw ioError(err, `writing blob ${this.blobId}`);
    }
  }

  async abort(): Promise<void> {
    this.finishUp(false);
  }
}
