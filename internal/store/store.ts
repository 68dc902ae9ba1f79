/**
 * The store engine: many volumes in one data directory, one in-memory needle
 * map, streaming writes with group commit, verified streaming reads,
 * tombstone deletes, compaction, scrub. No networking here.
 *
 * Semantics (the gRPC layer relies on these):
 * - A write is visible and acknowledged only after its needle and its index
 *   record are fsync'd.
 * - Rewriting a live id with the same size, cookie and SHA-256 is idempotent
 *   (returns the existing placement, writes nothing); other content →
 *   AlreadyExistsError('different-content').
 * - Deleted ids are not reused by writes: writing one → AlreadyExistsError('deleted').
 *   Only a replica copy (`replaceTombstone`, the replication manager's Replicate)
 *   may write over a tombstone; its needle supersedes the tombstone.
 * - Every needle and tombstone carries a stamp (`writtenAtMs`), strictly
 *   increasing per key: the wall clock, except that a record superseding one
 *   of the same key (a tombstone over its needle, a copy over its tombstone)
 *   is stamped at least 1 above it, so stamps of new keys never run ahead of
 *   the clock whatever the write rate, and a clock that stands still or steps
 *   back cannot reorder one key's records. On load, of all records of a key in
 *   all volumes the one with the greatest stamp wins (a tombstone wins a tie),
 *   so a delete survives restarts and compaction while older volumes still
 *   hold the data needle, and a later copy survives them over an older tombstone.
 * - Deleting an unknown or already deleted id writes nothing and returns false.
 * - Cookie 0 / undefined on read skips the cookie check; a mismatch is NotFound.
 * - Reads verify the CRC32C of the whole needle data, also for range reads
 *   (the bytes outside the range are read but not emitted); the last chunk is
 *   held back until the checksum matched, so a stream never completes with
 *   corrupt data: it fails with ChecksumError instead.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { validateBlobId } from '../common/blob-id.js';
import { KeyLock } from '../common/key-lock.js';
import { type CompactionResult, type CompactionStep, compactVolume } from './compaction.js';
import { crc32c } from './crc32c.js';
import {
  AlreadyExistsError,
  ChecksumError,
  InvalidArgumentError,
  isNoSpaceError,
  NotFoundError,
  ResourceExhaustedError,
} from './errors.js';
import { fsyncDir, readFully } from './fs-util.js';
import { INDEX_HEADER_SIZE, type IndexRecord, scanIndexFile } from './index-file.js';
import type { KeyHash } from './key-hash.js';
import {
  dataOffset,
  decodeFooter,
  decodeHeader,
  encodeFooter,
  encodeHeader,
  encodeNeedle,
  FLAG_DELETED,
  NEEDLE_FOOTER_SIZE,
  NEEDLE_HEADER_SIZE,
  type NeedleHeader,
  needleLength,
} from './needle.js';
import { MAX_LENGTH, MAX_OFFSET, MAX_VOLUME_ID, type NeedleLocation, NeedleMap } from './needle-map.js';
import { openVolume, type RecoveryLogger, settleDirectory } from './recovery.js';
import { type ScrubReport, scrubVolume } from './scrub.js';
import { SUPERBLOCK_SIZE } from './superblock.js';
import { createVolumeFiles, type StoreHooks, Volume, VolumeFile } from './volume.js';

export type { CompactionResult, CompactionStep, ScrubReport };

export interface StoreLogger extends RecoveryLogger {
  debug?(obj: object, msg?: string): void;
}

export interface Clock {
  now(): number;
}

export interface StoreTestHooks extends StoreHooks {
  /** Called at each compaction step; may throw (failure) or never resolve (simulated crash). */
  compactionStep?: (step: CompactionStep, volumeId: number) => void | Promise<void>;
}

export interface StoreOpenOptions {
  dataDir: string;
  /** Largest volume file in bytes (4 KiB .. 32 GiB). */
  maxVolumeSize: number;
  /** Compact volumes whose efficiency is below this (default 0.60). */
  compactionThreshold?: number;
  logger?: StoreLogger;
  clock?: Clock;
  /** At most this many volumes (default 65535); beyond → ResourceExhaustedError. */
  maxVolumes?: number;
  /** Default chunk size of read streams (default 256 KiB). */
  readChunkSize?: number;
  /** Fault injection and observation hooks (tests). */
  hooks?: StoreTestHooks;
  /** Replaces the needle map's key hash (tests force collisions with it). */
  keyHash?: KeyHash;
}

export interface WriteResult {
  volumeId: number;
  offset: number;
  size: number;
  crc32c: number;
  sha256: Uint8Array;
  /** True when the blob already existed with identical content (idempotent retry). */
  existed: boolean;
}

export interface WriteOptions {
  /**
   * A replica copy, placed by the replication manager: it may write over a
   * tombstone (the new needle supersedes it). Client writes never set it.
   */
  replaceTombstone?: boolean;
}

export interface NeedleWriter {
  readonly blobId: string;
  readonly size: number;
  /** Appends the next bytes; more than the declared size → InvalidArgumentError. */
  write(chunk: Uint8Array): Promise<void>;
  /** Makes the blob durable and visible; short stream or SHA-256 mismatch → InvalidArgumentError, nothing stored. */
  commit(expectedSha256?: Uint8Array): Promise<WriteResult>;
  /** Discards the write (idempotent). */
  abort(): Promise<void>;
}

export interface BlobReader {
  blobId: string;
  size: number;
  crc32c: number;
  volumeId: number;
  offset: number;
  cookie: bigint;
  writtenAtMs: number;
  /** Streams [offset, offset + length) of the content, verifying the whole needle's CRC32C. */
  stream(offset?: number, length?: number, chunkSize?: number): AsyncIterable<Uint8Array>;
}

export interface VolumeStatsInfo {
  volumeId: number;
  sizeBytes: number;
  liveBytes: number;
  needleCount: number;
  deletedCount: number;
  efficiency: number;
  readOnly: boolean;
  compacting: boolean;
}

export interface StoreStats {
  capacityBytes: number;
  freeBytes: number;
  usedBytes: number;
  needleCount: number;
  /** A new blob can be written (some volume can take it or another can be created). */
  writable: boolean;
  volumes: VolumeStatsInfo[];
}

export interface NeedleListing {
  blobId: string;
  volumeId: number;
  size: number;
  cookie: bigint;
  writtenAtMs: number;
}

interface Resolved {
  loc: NeedleLocation;
  header: NeedleHeader;
  vol: Volume;
  file: VolumeFile;
  /** The whole needle, when it was small enough to read in the lookup's one pread. */
  whole?: Uint8Array;
}

/**
 * Needles up to this length are read whole by the lookup: header, key, data and
 * footer in a single disk operation (Haystack's one-read promise).
 */
const ONE_READ_MAX = 256 * 1024;

const NOOP_LOG: StoreLogger = { info() {}, warn() {}, error() {} };
const MIN_VOLUME_SIZE = 4096;
const MAX_VOLUME_SIZE = MAX_OFFSET + 8;

function sameLoc(a: NeedleLocation | undefined, b: NeedleLocation): boolean {
  return a !== undefined && a.volumeId === b.volumeId && a.offset === b.offset;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Whether a record (stamp, deleted) supersedes the current entry of its key on
 * load. The greater stamp wins; on a tie, or when the current entry's header is
 * unreadable (its stamp unknown), a tombstone wins and otherwise the later record.
 */
function supersedes(stamp: number, deleted: boolean, cur: number | undefined, curDeleted: boolean): boolean {
  if (cur !== undefined && stamp !== cur) return stamp > cur;
  return deleted || !curDeleted;
}

function ioError(err: unknown, what: string): unknown {
  if (isNoSpaceError(err)) {
    return new ResourceExhaustedError(
      `no space left on the store disk while ${what}; free space or add disks`,
      {
        cause: err,
      },
    );
  }
  return err;
}

export class Store {
  readonly dataDir: string;
  readonly maxVolumeSize: number;
  readonly compactionThreshold: number;
  readonly readChunkSize: number;
  private readonly maxVolumes: number;
  private readonly log: StoreLogger;
  private readonly clock: Clock;
  private readonly hooks: StoreTestHooks;
  private readonly volumes = new Map<number, Volume>();
  private readonly map: NeedleMap;
  private readonly locks = new KeyLock();
  private creating: Promise<void> | undefined;
  private closed = false;
  /**
   * Per key, the stamp of its latest record whose commit failed. That record
   * may still be on disk (a needle whose footer wipe failed, a tombstone, an
   * index append whose cut failed) and come back on a restart, so the key's
   * next record is stamped above it. Cleared once a later record of the key
   * is current; only failed commits add entries.
   */
  private readonly failedStamps = new Map<string, number>();

  private constructor(o: StoreOpenOptions) {
    this.dataDir = o.dataDir;
    this.maxVolumeSize = o.maxVolumeSize;
    this.compactionThreshold = o.compactionThreshold ?? 0.6;
    this.readChunkSize = o.readChunkSize ?? 256 * 1024;
    this.maxVolumes = Math.min(o.maxVolumes ?? MAX_VOLUME_ID, MAX_VOLUME_ID);
    this.log = o.logger ?? NOOP_LOG;
    this.clock = o.clock ?? Date;
    this.hooks = o.hooks ?? {};
    this.map = new NeedleMap({
      keyAt: (loc) => this.volumes.get(loc.volumeId)?.readKeySync(loc.offset),
      ...(o.keyHash ? { hash: o.keyHash } : {}),
    });
  }

  /** Opens (creating if needed) the store in `dataDir`, recovering from any crash. */
  static async open(o: StoreOpenOptions): Promise<Store> {
    if (
      !Number.isSafeInteger(o.maxVolumeSize) ||
      o.maxVolumeSize < MIN_VOLUME_SIZE ||
      o.maxVolumeSize > MAX_VOLUME_SIZE
    ) {
      throw new InvalidArgumentError(
        `maxVolumeSize must be an integer between ${MIN_VOLUME_SIZE} and ${MAX_VOLUME_SIZE} bytes, got ${o.maxVolumeSize}`,
      );
    }
    const t = o.compactionThreshold ?? 0.6;
    if (!(t >= 0 && t <= 1))
      throw new InvalidArgumentError(`compactionThreshold must be within [0, 1], got ${t}`);
    await fs.mkdir(o.dataDir, { recursive: true });
    const s = new Store(o);
    try {
      const ids = await settleDirectory(o.dataDir, s.log);
      for (const id of ids) {
        const { report } = await openVolume({
          dir: o.dataDir,
          id,
          maxVolumeSize: o.maxVolumeSize,
          hooks: s.hooks,
          log: s.log,
          register: (v) => s.volumes.set(v.id, v),
          apply: (v, r) => s.applyRecord(v, r),
        });
        if (report.recovered || report.truncatedBytes || report.rebuilt || report.idxCut) {
          s.log.warn({ volumeId: id, ...report }, 'volume recovered');
        }
      }
      s.recomputeStats();
    } catch (err) {
      await s.close();
      throw err;
    }
    return s;
  }

  /**
   * Loading rule, a stamp-ordered merge over every volume's records: the record
   * with the greatest stamp wins (see `supersedes`), whatever the volume order.
   */
  private applyRecord(v: Volume, r: IndexRecord): void {
    const loc: NeedleLocation = {
      volumeId: v.id,
      offset: r.offset,
      length: needleLength(r.key.length, r.dataSize),
      deleted: (r.flags & FLAG_DELETED) !== 0,
    };
    const cur = this.map.lookup(r.key);
    if (!cur) {
      this.map.set(r.key, loc);
      return;
    }
    // One header read both confirms the key and gives the current entry's stamp.
    const h = this.volumes.get(cur.volumeId)?.readHeaderSync(cur.offset);
    if (h && h.key !== r.key) {
      this.map.set(r.key, loc); // another key with the same hash
      return;
    }
    if (supersedes(r.writtenAtMs, loc.deleted, h?.writtenAtMs, cur.deleted))
      this.map.replace(r.key, cur, loc);
  }

  /**
   * The stamp of a new record of `key`: the wall clock, but greater than
   * `current`, the stamp of the key's current record (undefined for a new
   * key), and than any record of the key whose commit failed. The caller holds
   * the key's lock until the record is published or failed, so one key's
   * records are totally ordered.
   */
  private stampFor(key: string, current: number | undefined): number {
    const floor = Math.max(current ?? -1, this.failedStamps.get(key) ?? -1);
    return Math.max(Math.floor(this.clock.now()), floor + 1);
  }

  /** @internal a record of `key` stamped `stamp` (above any earlier failed one) failed to commit. */
  _commitFailed(key: string, stamp: number): void {
    this.failedStamps.set(key, stamp);
  }

  private recomputeStats(only?: Volume): void {
    for (const v of this.volumes.values()) {
      if (only && v !== only) continue;
      v.liveBytes = 0;
      v.needleCount = 0;
    }
    this.map.forEach((loc) => {
      const v = this.volumes.get(loc.volumeId);
      if (!v || (only && v !== only)) return;
      v.liveBytes += loc.length;
      if (!loc.deleted) v.needleCount++;
    });
  }

  private checkOpen(): void {
    if (this.closed) throw new Error('store is closed');
  }

  private checkId(blobId: string): void {
    const problem = validateBlobId(blobId);
    if (problem) throw new InvalidArgumentError(problem);
  }

  /** Largest content size a blob with this id can have here. */
  maxBlobSize(blobId: string): number {
    const room = Math.min(this.maxVolumeSize - SUPERBLOCK_SIZE, MAX_LENGTH);
    return room - NEEDLE_HEADER_SIZE - blobId.length - NEEDLE_FOOTER_SIZE - 7;
  }

  // ------------------------------------------------------------------ lookup

  /** Finds and confirms the needle for `blobId`; the returned file reference must be released. */
  private async resolve(blobId: string): Promise<Resolved | undefined> {
    for (let attempt = 0; attempt < 8; attempt++) {
      const loc = this.map.lookup(blobId);
      if (!loc) return undefined;
      const vol = this.volumes.get(loc.volumeId);
      if (!vol) return undefined;
      const file = vol.dat;
      if (!file.acquire()) continue;
      let keep = false;
      try {
        const small = loc.length <= ONE_READ_MAX && loc.length >= NEEDLE_HEADER_SIZE + NEEDLE_FOOTER_SIZE;
        const buf = new Uint8Array(small ? loc.length : NEEDLE_HEADER_SIZE + 255);
        const n = await readFully(file.handle, buf, loc.offset);
        let header: NeedleHeader;
        try {
          header = decodeHeader(buf.subarray(0, n), 0, { volumeId: loc.volumeId, offset: loc.offset });
        } catch (err) {
          if (!sameLoc(this.map.lookup(blobId), loc)) continue; // moved meanwhile: retry
          throw err;
        }
        if (header.key !== blobId) return undefined; // another id with the same hash
        keep = true;
        const whole = small && n === loc.length ? buf : undefined;
        return whole ? { loc, header, vol, file, whole } : { loc, header, vol, file };
      } finally {
        if (!keep) file.release();
      }
    }
    throw new Error(`needle for ${blobId} kept moving; retry`);
  }

  private corrupt(blobId: string, loc: NeedleLocation, crc: number, stored: number): ChecksumError {
    return new ChecksumError(
      `blob ${blobId} in volume ${loc.volumeId} at offset ${loc.offset} is corrupt (CRC32C ${crc.toString(16)} != stored ${stored.toString(16)}); read it from another replica`,
      'data-checksum',
      loc.volumeId,
      loc.offset,
    );
  }

  private async readFooterCrc(r: Resolved): Promise<number> {
    const rel = dataOffset(r.header.key.length) + r.header.dataSize;
    if (r.whole && rel + NEEDLE_FOOTER_SIZE <= r.whole.length) {
      return decodeFooter(r.whole.subarray(rel, rel + NEEDLE_FOOTER_SIZE), 0, {
        volumeId: r.loc.volumeId,
        offset: r.loc.offset,
      });
    }
    const foot = new Uint8Array(NEEDLE_FOOTER_SIZE);
    const at = r.loc.offset + rel;
    const n = await readFully(r.file.handle, foot, at);
    return decodeFooter(foot.subarray(0, n), 0, { volumeId: r.loc.volumeId, offset: r.loc.offset });
  }

  // ------------------------------------------------------------------ read

  /** Opens a blob for reading. NotFoundError when absent, deleted, or the cookie differs. */
  async openRead(blobId: string, cookie?: bigint): Promise<BlobReader> {
    this.checkOpen();
    this.checkId(blobId);
    const r = await this.resolve(blobId);
    if (!r) throw new NotFoundError(`blob ${blobId} is not on this store`);
    let crc: number;
    try {
      if (r.loc.deleted) throw new NotFoundError(`blob ${blobId} was deleted`);
      if (cookie !== undefined && cookie !== 0n && cookie !== r.header.cookie) {
        throw new NotFoundError(`blob ${blobId} is not on this store (cookie mismatch)`);
      }
      crc = await this.readFooterCrc(r);
    } finally {
      r.file.release();
    }
    const h = r.header;
    return {
      blobId,
      size: h.dataSize,
      crc32c: crc,
      volumeId: r.loc.volumeId,
      offset: r.loc.offset,
      cookie: h.cookie,
      writtenAtMs: h.writtenAtMs,
      stream: (offset = 0, length?: number, chunkSize?: number) =>
        this.streamNeedle(r, crc, offset, length ?? h.dataSize - offset, chunkSize ?? this.readChunkSize),
    };
  }

  private async *streamNeedle(
    r: Resolved,
    storedCrc: number,
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
      const from = dataOffset(r.header.key.length);
      const data = r.whole.subarray(from, from + size);
      const crc = crc32c(data, 0);
      if (crc !== storedCrc) throw this.corrupt(r.header.key, r.loc, crc, storedCrc);
      const step = Math.max(4096, Math.min(chunkSize, 16 << 20));
      for (let pos = start; pos < start + length; pos += step) {
        yield data.subarray(pos, Math.min(start + length, pos + step));
      }
      return;
    }
    let file = r.file;
    let loc = r.loc;
    if (!file.acquire()) {
      // Compaction replaced the file since openRead: find the needle's new place.
      const again = await this.resolve(r.header.key);
      if (!again) throw new NotFoundError(`blob ${r.header.key} is no longer on this store`);
      if (again.loc.deleted || again.header.cookie !== r.header.cookie || again.header.dataSize !== size) {
        again.file.release();
        throw new NotFoundError(`blob ${r.header.key} is no longer on this store`);
      }
      file = again.file;
      loc = again.loc;
    }
    try {
      const base = loc.offset + dataOffset(r.header.key.length);
      const end = start + length;
      const step = Math.max(4096, Math.min(chunkSize, 16 << 20));
      let scratch: Uint8Array | undefined;
      let crc = 0;
      let pending: Uint8Array | undefined;
      for (let pos = 0; pos < size; ) {
        const n = Math.min(step, size - pos);
        const emits = pos < end && pos + n > start;
        let buf: Uint8Array;
        if (emits) buf = new Uint8Array(n);
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
        crc = crc32c(buf, crc);
        if (emits) {
          const s = Math.max(start, pos) - pos;
          const e = Math.min(end, pos + n) - pos;
          if (pending) yield pending;
          pending = buf.subarray(s, e);
        }
        pos += n;
      }
      if (crc !== storedCrc) throw this.corrupt(r.header.key, loc, crc, storedCrc);
      if (pending) yield pending;
    } finally {
      file.release();
    }
  }

  // ------------------------------------------------------------------ write

  private orderedVolumes(): Volume[] {
    return [...this.volumes.values()].sort((a, b) => a.id - b.id);
  }

  /** Reserves space in a writable volume, creating volumes as needed. */
  private async reserveSpace(length: number): Promise<{ vol: Volume; offset: number }> {
    for (;;) {
      this.checkOpen();
      for (const v of this.orderedVolumes()) {
        const offset = v.reserve(length);
        if (offset !== null) return { vol: v, offset };
      }
      await this.createVolume();
    }
  }

  private createVolume(): Promise<void> {
    if (this.creating) return this.creating;
    this.creating = (async () => {
      if (this.volumes.size >= this.maxVolumes) {
        throw new ResourceExhaustedError(
          `all ${this.volumes.size} volumes are full or read-only and the volume limit (${this.maxVolumes}) is reached; compact, delete, or add a store`,
        );
      }
      const id = Math.max(0, ...this.volumes.keys()) + 1;
      if (id > MAX_VOLUME_ID) throw new ResourceExhaustedError(`volume ids exhausted (max ${MAX_VOLUME_ID})`);
      const now = this.clock.now();
      try {
        const { dat, idx } = await createVolumeFiles(this.dataDir, id, now, this.hooks);
        this.hooks.onFsync?.('dir', id);
        await fsyncDir(this.dataDir);
        const v = new Volume(
          id,
          this.dataDir,
          new VolumeFile(dat),
          new VolumeFile(idx),
          0,
          now,
          SUPERBLOCK_SIZE,
          INDEX_HEADER_SIZE,
          this.maxVolumeSize,
          this.hooks,
        );
        if (this.closed) {
          await v.close();
          return;
        }
        this.volumes.set(id, v);
        this.log.info({ volumeId: id }, 'created volume');
      } catch (err) {
        throw ioError(err, `creating volume ${id}`);
      }
    })().finally(() => {
      this.creating = undefined;
    });
    return this.creating;
  }

  /**
   * Starts writing blob `blobId` of exactly `size` bytes. Holds the id's lock
   * until commit/abort (a concurrent writer of the same id waits).
   */
  async beginWrite(
    blobId: string,
    cookie: bigint,
    size: number,
    opts: WriteOptions = {},
  ): Promise<NeedleWriter> {
    this.checkOpen();
    this.checkId(blobId);
    if (!Number.isSafeInteger(size) || size < 0)
      throw new InvalidArgumentError(`size must be a non-negative integer, got ${size}`);
    const max = this.maxBlobSize(blobId);
    if (size > max) {
      throw new InvalidArgumentError(
        `blob of ${size} bytes exceeds the largest blob this store takes (${max} bytes)`,
      );
    }
    const release = await this.locks.acquire(blobId);
    try {
      const existing = await this.resolve(blobId);
      if (existing) {
        existing.file.release();
        if (!existing.loc.deleted)
          return new BlobWriter(this, blobId, cookie, size, release, undefined, existing);
        if (!opts.replaceTombstone) {
          throw new AlreadyExistsError(
            `blob ${blobId} was deleted; deleted ids cannot be reused, write under a new id`,
            'deleted',
          );
        }
        // A replica copy: the new needle's greater stamp supersedes the tombstone.
      }
      const length = needleLength(blobId.length, size);
      const { vol, offset } = await this.reserveSpace(length);
      const stamp = this.stampFor(blobId, existing?.header.writtenAtMs);
      const header = encodeHeader({ key: blobId, cookie, flags: 0, dataSize: size, writtenAtMs: stamp });
      try {
        await vol.writeDat(header, offset);
      } catch (err) {
        vol.finish();
        if (!isNoSpaceError(err)) vol.markBroken(`header write failed: ${(err as Error).message}`);
        throw ioError(err, `writing blob ${blobId}`);
      }
      return new BlobWriter(this, blobId, cookie, size, release, { vol, offset, stamp }, undefined);
    } catch (err) {
      release();
      throw err;
    }
  }

  /** @internal used by BlobWriter */
  async _sha256Of(r: Resolved): Promise<{ sha: Uint8Array; crc: number }> {
    const reader = await this.openRead(r.header.key);
    const h = createHash('sha256');
    for await (const c of reader.stream()) h.update(c);
    return { sha: new Uint8Array(h.digest()), crc: reader.crc32c };
  }

  /** @internal publishes a durable needle in the map and stats. */
  _publish(vol: Volume, key: string, loc: NeedleLocation): void {
    const prev = this.map.get(key);
    this.map.set(key, loc);
    this.failedStamps.delete(key); // the new record was stamped above the failed ones
    if (prev) {
      const pv = this.volumes.get(prev.volumeId);
      if (pv) {
        pv.liveBytes -= prev.length;
        if (!prev.deleted) pv.needleCount--;
      }
    }
    vol.liveBytes += loc.length;
    if (!loc.deleted) vol.needleCount++;
  }

  get _clock(): Clock {
    return this.clock;
  }

  // ------------------------------------------------------------------ delete

  /** Appends a durable tombstone for a live blob. False when absent or already deleted. */
  async delete(blobId: string): Promise<boolean> {
    this.checkOpen();
    this.checkId(blobId);
    const release = await this.locks.acquire(blobId);
    try {
      const r = await this.resolve(blobId);
      if (!r) return false;
      r.file.release();
      if (r.loc.deleted) return false;
      // Header and index record carry the same stamp (the load order compares them).
      const stamp = this.stampFor(blobId, r.header.writtenAtMs);
      const tomb = encodeNeedle(
        { key: blobId, cookie: r.header.cookie, flags: FLAG_DELETED, writtenAtMs: stamp },
        new Uint8Array(0),
      );
      const { vol, offset } = await this.reserveTombstoneSpace(tomb.length, r.vol);
      try {
        await vol.writeDat(tomb, offset);
        const record: IndexRecord = {
          key: blobId,
          flags: FLAG_DELETED,
          offset,
          dataSize: 0,
          cookie: r.header.cookie,
          writtenAtMs: stamp,
        };
        await vol.committer.submit({
          record,
          onDurable: () =>
            this._publish(vol, blobId, { volumeId: vol.id, offset, length: tomb.length, deleted: true }),
        });
      } catch (err) {
        this._commitFailed(blobId, stamp);
        if (!isNoSpaceError(err)) vol.markBroken(`tombstone write failed: ${(err as Error).message}`);
        throw ioError(err, `deleting blob ${blobId}`);
      } finally {
        vol.finish();
      }
      return true;
    } finally {
      release();
    }
  }

  /**
   * Room for a tombstone: a writable volume as usual, else (every volume full and
   * the volume limit reached) the deleted needle's own volume, so deletes and then
   * compaction can free space on a full store.
   */
  private async reserveTombstoneSpace(length: number, own: Volume): Promise<{ vol: Volume; offset: number }> {
    try {
      return await this.reserveSpace(length);
    } catch (err) {
      if (!(err instanceof ResourceExhaustedError)) throw err;
      const offset = own.reserveTombstone(length);
      if (offset === null) throw err;
      return { vol: own, offset };
    }
  }

  // ------------------------------------------------------------------ maintenance

  private efficiency(v: Volume): number {
    return v.tail <= SUPERBLOCK_SIZE ? 1 : Math.min(1, (v.liveBytes + SUPERBLOCK_SIZE) / v.tail);
  }

  /**
   * Compacts `volumeId` (if below the threshold, or `force`), or every volume
   * below the threshold. Reads continue; new writes go to other volumes.
   */
  async compact(volumeId?: number, force = false): Promise<CompactionResult[]> {
    this.checkOpen();
    let targets: Volume[];
    if (volumeId !== undefined) {
      const v = this.volumes.get(volumeId);
      if (!v) throw new NotFoundError(`volume ${volumeId} does not exist on this store`);
      targets = force || this.efficiency(v) < this.compactionThreshold ? [v] : [];
    } else {
      targets = this.orderedVolumes().filter((v) => force || this.efficiency(v) < this.compactionThreshold);
    }
    const out: CompactionResult[] = [];
    for (const v of targets) {
      if (v.compacting || v.broken !== undefined) continue;
      const res = await compactVolume(
        {
          dir: this.dataDir,
          map: this.map,
          log: this.log,
          hooks: this.hooks,
          recompute: (vol) => this.recomputeStats(vol),
        },
        v,
      );
      out.push(res);
    }
    return out;
  }

  /** Verifies every indexed needle of one or all volumes. */
  async scrub(volumeId?: number): Promise<ScrubReport> {
    this.checkOpen();
    const vols =
      volumeId === undefined
        ? this.orderedVolumes()
        : [this.volumes.get(volumeId) ?? this.throwNoVolume(volumeId)];
    const total: ScrubReport = { needlesChecked: 0, bytesChecked: 0, corrupt: [] };
    for (const v of vols) {
      const r = await scrubVolume(v, this.map);
      total.needlesChecked += r.needlesChecked;
      total.bytesChecked += r.bytesChecked;
      total.corrupt.push(...r.corrupt);
    }
    return total;
  }

  private throwNoVolume(id: number): never {
    throw new NotFoundError(`volume ${id} does not exist on this store`);
  }

  async stats(): Promise<StoreStats> {
    this.checkOpen();
    const fsStats = await fs.statfs(this.dataDir);
    const volumes: VolumeStatsInfo[] = this.orderedVolumes().map((v) => ({
      volumeId: v.id,
      sizeBytes: v.tail,
      liveBytes: v.liveBytes,
      needleCount: v.needleCount,
      deletedCount: Math.max(0, v.recordCount - v.needleCount),
      efficiency: this.efficiency(v),
      readOnly: v.readOnly || v.broken !== undefined,
      compacting: v.compacting,
    }));
    let used = 0;
    let needles = 0;
    for (const v of this.volumes.values()) {
      used += v.tail + v.idxTail;
      needles += v.needleCount;
    }
    const freeBytes = fsStats.bavail * fsStats.bsize;
    const canCreate = this.volumes.size < this.maxVolumes;
    return {
      capacityBytes: fsStats.blocks * fsStats.bsize,
      freeBytes,
      usedBytes: used,
      needleCount: needles,
      writable: freeBytes > 0 && ([...this.volumes.values()].some((v) => v.writable) || canCreate),
      volumes,
    };
  }

  /**
   * Live needles with blob id > `afterBlobId`, in blob id order, at most `limit`.
   * Reads the index files (for garbage collection; not a hot path).
   */
  async listNeedles(afterBlobId: string | undefined, limit: number): Promise<NeedleListing[]> {
    this.checkOpen();
    const best: NeedleListing[] = [];
    if (limit <= 0) return best;
    for (const v of this.orderedVolumes()) {
      for (let attempt = 0; ; attempt++) {
        const gen = v.generation;
        const file = v.idx;
        if (!file.acquire()) continue;
        const found: NeedleListing[] = [];
        try {
          await scanIndexFile(file.handle, INDEX_HEADER_SIZE, v.idxTail, (r) => {
            if (r.flags & FLAG_DELETED) return;
            if (afterBlobId !== undefined && r.key <= afterBlobId) return;
            if (best.length === limit && r.key >= best[limit - 1]!.blobId) return;
            const cur = this.map.lookup(r.key);
            if (!cur || cur.deleted || cur.volumeId !== v.id || cur.offset !== r.offset) return;
            found.push({
              blobId: r.key,
              volumeId: v.id,
              size: r.dataSize,
              cookie: r.cookie,
              writtenAtMs: r.writtenAtMs,
            });
          });
        } finally {
          file.release();
        }
        if (v.generation !== gen && attempt < 3) continue; // compacted meanwhile: rescan
        for (const n of found) {
          if (best.length === limit && n.blobId >= best[limit - 1]!.blobId) continue;
          let lo = 0;
          let hi = best.length;
          while (lo < hi) {
            const mid = (lo + hi) >> 1;
            if (best[mid]!.blobId < n.blobId) lo = mid + 1;
            else hi = mid;
          }
          best.splice(lo, 0, n);
          if (best.length > limit) best.pop();
        }
        break;
      }
    }
    return best;
  }

  /** Number of entries in the needle map (live + tombstones) and its table footprint. */
  mapInfo(): { entries: number; overflow: number; capacity: number; tableBytes: number } {
    return {
      entries: this.map.size,
      overflow: this.map.overflowSize,
      capacity: this.map.capacity,
      tableBytes: this.map.tableBytes,
    };
  }

  /** Group-commit counters per volume (observability/tests). */
  commitStats(): { volumeId: number; flushes: number; items: number }[] {
    return this.orderedVolumes().map((v) => ({
      volumeId: v.id,
      flushes: v.committer.flushes,
      items: v.committer.items,
    }));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.creating?.catch(() => {});
    await Promise.all([...this.volumes.values()].map((v) => v.close()));
  }
}

interface Placement {
  vol: Volume;
  offset: number;
  /** The needle's stamp (header and index record carry the same). */
  stamp: number;
}

class BlobWriter implements NeedleWriter {
  private written = 0;
  private readonly crc = { value: 0 };
  private readonly sha = createHash('sha256');
  private done = false;
  private busy = false;

  constructor(
    private readonly store: Store,
    readonly blobId: string,
    private readonly cookie: bigint,
    readonly size: number,
    private readonly unlock: () => void,
    /** Where the new needle goes (undefined: the id exists; compare content only). */
    private readonly place: Placement | undefined,
    private readonly existing: Resolved | undefined,
  ) {}

  private finishUp(): void {
    if (this.done) return;
    this.done = true;
    this.place?.vol.finish();
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
    this.busy = true;
    try {
      this.crc.value = crc32c(chunk, this.crc.value);
      this.sha.update(chunk);
      if (this.place) {
        const at = this.place.offset + dataOffset(this.blobId.length) + this.written;
        try {
          await this.place.vol.writeDat(chunk, at);
        } catch (err) {
          if (!isNoSpaceError(err)) this.place.vol.markBroken(`data write failed: ${(err as Error).message}`);
          await this.abort();
          throw ioError(err, `writing blob ${this.blobId}`);
        }
      }
      this.written += chunk.length;
    } finally {
      this.busy = false;
    }
  }

  async commit(expectedSha256?: Uint8Array): Promise<WriteResult> {
    if (this.done) throw new InvalidArgumentError(`write of ${this.blobId} already finished`);
    if (this.busy) throw new InvalidArgumentError('commit() while a write() is pending');
    try {
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
      const crc = this.crc.value;
      if (!this.place) {
        const ex = this.existing!;
        const same =
          ex.header.dataSize === this.size &&
          ex.header.cookie === this.cookie &&
          bytesEqual((await this.store._sha256Of(ex)).sha, sha);
        if (!same) {
          throw new AlreadyExistsError(
            `blob ${this.blobId} already exists with different content or cookie; blob ids are immutable`,
            'different-content',
          );
        }
        return {
          volumeId: ex.loc.volumeId,
          offset: ex.loc.offset,
          size: this.size,
          crc32c: crc,
          sha256: sha,
          existed: true,
        };
      }
      const { vol, offset } = this.place;
      const footer = encodeFooter(crc, this.blobId.length, this.size);
      const footerAt = offset + dataOffset(this.blobId.length) + this.size;
      try {
        await vol.writeDat(footer, footerAt);
        const length = needleLength(this.blobId.length, this.size);
        const record: IndexRecord = {
          key: this.blobId,
          flags: 0,
          offset,
          dataSize: this.size,
          cookie: this.cookie,
          writtenAtMs: this.place.stamp,
        };
        await vol.committer.submit({
          record,
          onDurable: () =>
            this.store._publish(vol, this.blobId, { volumeId: vol.id, offset, length, deleted: false }),
        });
      } catch (err) {
        // Never let a failed commit resurface through recovery: wipe the footer (best
        // effort). Should the needle come back anyway, the key's next record outstamps it.
        this.store._commitFailed(this.blobId, this.place.stamp);
        await vol.writeDat(new Uint8Array(NEEDLE_FOOTER_SIZE), footerAt).catch(() => {});
        if (!isNoSpaceError(err)) vol.markBroken(`commit failed: ${(err as Error).message}`);
        throw ioError(err, `committing blob ${this.blobId}`);
      }
      return { volumeId: vol.id, offset, size: this.size, crc32c: crc, sha256: sha, existed: false };
    } finally {
      this.finishUp();
    }
  }

  async abort(): Promise<void> {
    this.finishUp();
  }
}
