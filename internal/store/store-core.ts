/**
 * The state every store verb shares (store-read, store-write, store-delete,
 * store-compact, store-list): volumes, the needle map, per-key locks, stamps,
 * needle lookup and publication, space reservation and volume creation. The
 * public face is `Store` (store.ts); this module has no networking.
 */
import { validateBlobId } from '../common/blob-id.js';
import type { KeyHash } from '../common/key-hash.js';
import { KeyLock } from '../common/key-lock.js';
import type { CompactionResult, CompactionStep } from './compaction.js';
import type { Keyring } from './crypto/kek.js';
import { NeedleOpener, needleAad } from './crypto/needle-seal.js';
import { newVolumeKeys } from './crypto/volume-keys.js';
import { ChecksumError, InvalidArgumentError, isNoSpaceError, ResourceExhaustedError } from './errors.js';
import { fsyncDir, readFully } from './fs-util.js';
import { INDEX_HEADER_SIZE, type IndexRecord } from './index-file.js';
import {
  dataOffsetOf,
  decodeFooterFull,
  decodeHeader,
  FLAG_DELETED,
  footerSize,
  lengthOf,
  MAX_HEADER_LENGTH,
  MAX_META_FIELD,
  NEEDLE_FOOTER_SIZE,
  NEEDLE_FOOTER_SIZE_SEALED,
  NEEDLE_HEADER_SIZE,
  type NeedleFooter,
  type NeedleHeader,
} from './needle.js';
import { MAX_LENGTH, MAX_VOLUME_ID, type NeedleLocation, NeedleMap } from './needle-map.js';
import type { RecoveryLogger } from './recovery.js';
import type { ScrubReport } from './scrub.js';
import { SUPERBLOCK_SIZE } from './superblock.js';
import { createVolumeFiles, type StoreHooks, Volume, VolumeFile } from './volume.js';

export interface StoreLogger extends RecoveryLogger {
  debug?(obj: object, msg?: string): void;
}

export interface Clock {
  now(): number;
}

export interface StoreTestHooks extends StoreHooks {
  /** Called at each compaction step; may throw (failure) or never resolve (simulated crash). */
  compactionStep?: (step: CompactionStep, volumeId: number) => void | Promise<void>;
  /** After each volume's compaction: its result, or the error it failed with (metrics). */
  onCompaction?: (volumeId: number, outcome: { result: CompactionResult } | { error: unknown }) => void;
  /** After each volume's scrub (metrics). */
  onScrub?: (volumeId: number, report: ScrubReport) => void;
}

export interface StoreCoreOptions {
  dataDir: string;
  maxVolumeSize: number;
  compactionThreshold: number;
  readChunkSize: number;
  maxVolumes: number;
  log: StoreLogger;
  clock: Clock;
  hooks: StoreTestHooks;
  keyHash?: KeyHash;
  /** KEKs: with them every volume has DEKs and new needles are encrypted (internal/store/crypto). */
  keyring?: Keyring;
}

/** A needle found and confirmed; `file` holds a reference the caller must release. */
export interface Resolved {
  loc: NeedleLocation;
  header: NeedleHeader;
  vol: Volume;
  file: VolumeFile;
  /** The whole needle, when it was small enough to read in the lookup's one pread. */
  whole?: Uint8Array;
}

/** Everything a store records about one needle (the contract's NeedleFacts). */
export interface NeedleFactsInfo {
  blobId: string;
  cookie: bigint;
  /** Content size in bytes (0 for a tombstone). */
  size: number;
  /** SHA-256 of the content (format v2 needles; undefined for v1 needles and tombstones). */
  sha256: Uint8Array | undefined;
  contentType: string;
  fileName: string;
  /** The needle's stamp, ms since the Unix epoch. */
  writtenAtMs: number;
  deleted: boolean;
  crc32c: number;
  volumeId: number;
  offset: number;
}

/**
 * Needles up to this length are read whole by the lookup: header, key, data and
 * footer in a single disk operation (Haystack's one-read promise).
 */
const ONE_READ_MAX = 256 * 1024;

function sameLoc(a: NeedleLocation | undefined, b: NeedleLocation): boolean {
  return a !== undefined && a.volumeId === b.volumeId && a.offset === b.offset;
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

/** ENOSPC and friends become ResourceExhaustedError; other errors pass through. */
export function ioError(err: unknown, what: string): unknown {
  if (isNoSpaceError(err)) {
    return new ResourceExhaustedError(
      `no space left on the store disk while ${what}; free space or add disks`,
      { cause: err },
    );
  }
  return err;
}

export class StoreCore {
  readonly dataDir: string;
  readonly maxVolumeSize: number;
  readonly compactionThreshold: number;
  readonly readChunkSize: number;
  readonly maxVolumes: number;
  readonly log: StoreLogger;
  readonly clock: Clock;
  readonly hooks: StoreTestHooks;
  /** Replaced only by a re-wrap (`Store.rewrapKeys`), never set on a plaintext store. */
  keyring: Keyring | undefined;
  readonly volumes = new Map<number, Volume>();
  readonly map: NeedleMap;
  readonly locks = new KeyLock();
  private creating: Promise<void> | undefined;
  closed = false;
  /**
   * Per key, the stamp of its latest record whose commit failed. That record
   * may still be on disk (a needle whose footer wipe failed, a tombstone, an
   * index append whose cut failed) and come back on a restart, so the key's
   * next record is stamped above it. Cleared once a later record of the key
   * is current; only failed commits add entries.
   */
  private readonly failedStamps = new Map<string, number>();

  constructor(o: StoreCoreOptions) {
    this.dataDir = o.dataDir;
    this.maxVolumeSize = o.maxVolumeSize;
    this.compactionThreshold = o.compactionThreshold;
    this.readChunkSize = o.readChunkSize;
    this.maxVolumes = o.maxVolumes;
    this.log = o.log;
    this.clock = o.clock;
    this.hooks = o.hooks;
    this.keyring = o.keyring;
    this.map = new NeedleMap({
      keyAt: (loc) => this.volumes.get(loc.volumeId)?.readKeySync(loc.offset),
      ...(o.keyHash ? { hash: o.keyHash } : {}),
    });
  }

  /**
   * Loading rule, a stamp-ordered merge over every volume's records: the record
   * with the greatest stamp wins (see `supersedes`), whatever the volume order.
   */
  applyRecord(v: Volume, r: IndexRecord): void {
    const loc: NeedleLocation = {
      volumeId: v.id,
      offset: r.offset,
      length: lengthOf(r),
      deleted: (r.flags & FLAG_DELETED) !== 0,
      stamp: r.writtenAtMs,
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
   * The stamp of a new record of `key`: `base` (the wall clock unless a stamp
   * was chosen elsewhere: a forwarded write, a copy), but greater than
   * `current`, the stamp of the key's current record (undefined for a new
   * key), and than any record of the key whose commit failed. The caller holds
   * the key's lock until the record is published or failed, so one key's
   * records are totally ordered.
   */
  stampFor(key: string, current: number | undefined, base?: number): number {
    const floor = Math.max(current ?? -1, this.failedStamps.get(key) ?? -1);
    return Math.max(Math.floor(base ?? this.clock.now()), floor + 1);
  }

  /** The stamp of the key's latest failed record, if any. */
  failedStamp(key: string): number | undefined {
    return this.failedStamps.get(key);
  }

  /** A record of `key` stamped `stamp` (above any earlier failed one) failed to commit. */
  commitFailed(key: string, stamp: number): void {
    this.failedStamps.set(key, stamp);
  }

  /** Publishes a durable needle in the map and the volume counters. */
  publish(vol: Volume, key: string, loc: NeedleLocation): void {
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

  recomputeStats(only?: Volume): void {
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

  checkOpen(): void {
    if (this.closed) throw new Error('store is closed');
  }

  checkId(blobId: string): void {
    const problem = validateBlobId(blobId);
    if (problem) throw new InvalidArgumentError(problem);
  }

  /** Largest content size a blob with this id can have here (with the longest content type and file name). */
  maxBlobSize(blobId: string): number {
    const room = Math.min(this.maxVolumeSize - SUPERBLOCK_SIZE, MAX_LENGTH);
    return room - NEEDLE_HEADER_SIZE - blobId.length - 2 * MAX_META_FIELD - NEEDLE_FOOTER_SIZE_SEALED - 7;
  }

  efficiency(v: Volume): number {
    return v.tail <= SUPERBLOCK_SIZE ? 1 : Math.min(1, (v.liveBytes + SUPERBLOCK_SIZE) / v.tail);
  }

  orderedVolumes(): Volume[] {
    return [...this.volumes.values()].sort((a, b) => a.id - b.id);
  }

  // ------------------------------------------------------------------ lookup

  /**
   * Reads the header at `loc` (the whole needle when ≤ `wholeMax` bytes); undefined when the
   * volume or its file is gone (compaction replaced it: look the key up again).
   * Throws ChecksumError for an unreadable header. The returned file reference
   * must be released.
   */
  async readAt(loc: NeedleLocation, wholeMax = ONE_READ_MAX): Promise<Resolved | undefined> {
    const vol = this.volumes.get(loc.volumeId);
    if (!vol) return undefined;
    const file = vol.dat;
    if (!file.acquire()) return undefined;
    let keep = false;
    try {
      const small = loc.length <= wholeMax && loc.length >= NEEDLE_HEADER_SIZE + NEEDLE_FOOTER_SIZE;
      const buf = new Uint8Array(small ? loc.length : MAX_HEADER_LENGTH);
      const n = await readFully(file.handle, buf, loc.offset);
      const header = decodeHeader(buf.subarray(0, n), 0, { volumeId: loc.volumeId, offset: loc.offset });
      keep = true;
      const whole = small && n === loc.length ? buf : undefined;
      return whole ? { loc, header, vol, file, whole } : { loc, header, vol, file };
    } finally {
      if (!keep) file.release();
    }
  }

  /** Finds and confirms the needle for `blobId`; the returned file reference must be released. */
  async resolve(blobId: string): Promise<Resolved | undefined> {
    for (let attempt = 0; attempt < 8; attempt++) {
      const loc = this.map.lookup(blobId);
      if (!loc) return undefined;
      if (!this.volumes.has(loc.volumeId)) return undefined;
      let r: Resolved | undefined;
      try {
        r = await this.readAt(loc);
      } catch (err) {
        if (!sameLoc(this.map.lookup(blobId), loc)) continue; // moved meanwhile: retry
        throw err;
      }
      if (!r) continue;
      if (r.header.key !== blobId) {
        r.file.release();
        return undefined; // another id with the same hash
      }
      return r;
    }
    throw new Error(`needle for ${blobId} kept moving; retry`);
  }

  /** Reads and validates the footer of a resolved needle (CRC32C, and SHA-256 for v2). */
  async readFooter(r: Resolved): Promise<NeedleFooter> {
    const rel = dataOffsetOf(r.header) + r.header.dataSize;
    const size = footerSize(r.header.flags);
    const where = { volumeId: r.loc.volumeId, offset: r.loc.offset };
    if (r.whole && rel + size <= r.whole.length) {
      return decodeFooterFull(r.whole.subarray(rel, rel + size), 0, where, r.header.flags);
    }
    const foot = new Uint8Array(size);
    const n = await readFully(r.file.handle, foot, r.loc.offset + rel);
    return decodeFooterFull(foot.subarray(0, n), 0, where, r.header.flags);
  }

  /** The facts of a resolved needle (reads its footer when the lookup did not). */
  async factsOf(r: Resolved): Promise<NeedleFactsInfo> {
    return this.factsWith(r, await this.readFooter(r));
  }

  /** The facts of a resolved needle whose footer was read. */
  factsWith(r: Resolved, foot: NeedleFooter): NeedleFactsInfo {
    const h = r.header;
    return {
      blobId: h.key,
      cookie: h.cookie,
      size: h.dataSize,
      sha256: foot.sha256,
      contentType: h.contentType ?? '',
      fileName: h.fileName ?? '',
      writtenAtMs: h.writtenAtMs,
      deleted: (h.flags & FLAG_DELETED) !== 0,
      crc32c: foot.crc32c,
      volumeId: r.loc.volumeId,
      offset: r.loc.offset,
    };
  }

  corrupt(blobId: string, loc: NeedleLocation, crc: number, stored: number): ChecksumError {
    return new ChecksumError(
      `blob ${blobId} in volume ${loc.volumeId} at offset ${loc.offset} is corrupt (CRC32C ${crc.toString(16)} != stored ${stored.toString(16)}); read it from another replica`,
      'data-checksum',
      loc.volumeId,
      loc.offset,
    );
  }

  /**
   * An opener for an encrypted needle's data (header `h` at `loc` in `vol`,
   * its footer `foot`). ChecksumError when the volume has no key in the
   * needle's slot or the footer lacks nonce/tag (damaged).
   */
  opener(vol: Volume, h: NeedleHeader, foot: NeedleFooter, loc: NeedleLocation): NeedleOpener {
    const dek = h.keySlot === undefined ? undefined : vol.keys?.dek(h.keySlot);
    if (!dek || !foot.nonce || !foot.tag) {
      throw new ChecksumError(
        `blob ${h.key} in volume ${loc.volumeId} at offset ${loc.offset} names key slot ${h.keySlot}, which this volume does not have; read it from another replica`,
        'header-field',
        loc.volumeId,
        loc.offset,
      );
    }
    return new NeedleOpener(dek, needleAad(h), foot.nonce, foot.tag);
  }

  /** The error of an encrypted needle whose GCM tag did not match (DATA_LOSS; repair copies it back). */
  authFailed(blobId: string, loc: NeedleLocation): ChecksumError {
    return new ChecksumError(
      `blob ${blobId} in volume ${loc.volumeId} at offset ${loc.offset} is corrupt (AES-GCM tag mismatch: ciphertext, header or footer changed); read it from another replica`,
      'data-auth',
      loc.volumeId,
      loc.offset,
    );
  }

  // ------------------------------------------------------------------ space

  /** Reserves space in a writable volume, creating volumes as needed. */
  async reserveSpace(length: number): Promise<{ vol: Volume; offset: number }> {
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
        if (this.keyring) {
          // Fresh DEKs (overwriting a key file a lost volume of this id may have left).
          v.keys = newVolumeKeys(id);
          await v.keys.save(this.dataDir, this.keyring).catch(async (err: unknown) => {
            await v.close();
            throw err;
          });
        }
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

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.creating?.catch(() => {});
    await Promise.all([...this.volumes.values()].map((v) => v.close()));
  }
}
