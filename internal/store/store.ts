/**
 * The store engine: many volumes in one data directory, one in-memory needle
 * map, streaming writes with group commit, verified streaming reads,
 * tombstone deletes, compaction, scrub, placement-group listings. No
 * networking here. Split by verb, as SeaweedFS splits a volume
 * (volume_read.go, volume_write.go, volume_vacuum.go):
 *
 *   store.ts          this facade: open (recovery) / close, statistics
 *   store-core.ts     shared state: volumes, needle map, locks, stamps, lookup, space
 *   store-write.ts    beginWrite and the needle writer (idempotency rules)
 *   store-read.ts     openRead (verified streaming), stat (facts)
 *   store-delete.ts   tombstones (client deletes and stamped copies)
 *   store-compact.ts  compaction and scrub
 *   store-list.ts     listNeedles, placement-group listing and digests
 *   store-keys.ts     KEKs in use, re-wrap of the volume keys (KEK rotation)
 *
 * Stamp order (docs/volume-format.md): every needle and tombstone carries a
 * stamp (`writtenAtMs`), strictly increasing per key: the wall clock, except
 * that a record superseding one of the same key (a tombstone over its needle,
 * a needle over its tombstone) is stamped at least 1 above it, so stamps of new
 * keys never run ahead of the clock whatever the write rate, and a clock that
 * stands still or steps back cannot reorder one key's records. On load, of all
 * records of a key in all volumes the one with the greatest stamp wins (a
 * tombstone wins a tie), so a delete survives restarts and compaction while
 * older volumes still hold the data needle, and a later needle survives them
 * over an older tombstone.
 */
import fs from 'node:fs/promises';
import type { KeyHash } from '../common/key-hash.js';
import type { CompactionResult, CompactionStep } from './compaction.js';
import type { Keyring } from './crypto/kek.js';
import { openVolumeKeys } from './crypto/open-keys.js';
import { InvalidArgumentError } from './errors.js';
import { MAX_OFFSET, MAX_VOLUME_ID } from './needle-map.js';
import { openVolume, settleDirectory } from './recovery.js';
import type { ScrubReport } from './scrub.js';
import { compactVolumes, scrubVolumes } from './store-compact.js';
import {
  type Clock,
  type NeedleFactsInfo,
  StoreCore,
  type StoreLogger,
  type StoreTestHooks,
} from './store-core.js';
import { type DeleteOptions, deleteNeedle } from './store-delete.js';
import { type EngineRewrap, keksInUse, rewrapKeys } from './store-keys.js';
import {
  type GroupCursor,
  type GroupDigest,
  type GroupPage,
  type ListGroupOptions,
  listNeedles,
  listPlacementGroup,
  type NeedleListing,
  placementDigests,
} from './store-list.js';
import { type BlobReader, openRead, type StatOptions, statNeedle } from './store-read.js';
import { beginWrite, type NeedleWriter, type WriteOptions, type WriteResult } from './store-write.js';

export type {
  BlobReader,
  Clock,
  CompactionResult,
  CompactionStep,
  DeleteOptions,
  EngineRewrap,
  GroupCursor,
  GroupDigest,
  GroupPage,
  ListGroupOptions,
  NeedleFactsInfo,
  NeedleListing,
  NeedleWriter,
  ScrubReport,
  StatOptions,
  StoreLogger,
  StoreTestHooks,
  WriteOptions,
  WriteResult,
};

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
  /**
   * Key-encryption keys (KEK_FILE): new needles are encrypted at rest and
   * every volume's DEKs are re-wrapped under the newest KEK. Without them a
   * volume holding encrypted needles fails to open (KeyringError).
   */
  keyring?: Keyring;
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

const NOOP_LOG: StoreLogger = { info() {}, warn() {}, error() {} };
const MIN_VOLUME_SIZE = 4096;
const MAX_VOLUME_SIZE = MAX_OFFSET + 8;

export class Store {
  private constructor(private readonly core: StoreCore) {}

  get dataDir(): string {
    return this.core.dataDir;
  }
  get maxVolumeSize(): number {
    return this.core.maxVolumeSize;
  }
  get compactionThreshold(): number {
    return this.core.compactionThreshold;
  }
  get readChunkSize(): number {
    return this.core.readChunkSize;
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
    const core = new StoreCore({
      dataDir: o.dataDir,
      maxVolumeSize: o.maxVolumeSize,
      compactionThreshold: t,
      readChunkSize: o.readChunkSize ?? 256 * 1024,
      maxVolumes: Math.min(o.maxVolumes ?? MAX_VOLUME_ID, MAX_VOLUME_ID),
      log: o.logger ?? NOOP_LOG,
      clock: o.clock ?? Date,
      hooks: o.hooks ?? {},
      ...(o.keyHash ? { keyHash: o.keyHash } : {}),
      ...(o.keyring ? { keyring: o.keyring } : {}),
    });
    try {
      const ids = await settleDirectory(o.dataDir, core.log);
      // Keys first: a wrong or missing KEK stops the store before any volume is touched.
      const keys = await openVolumeKeys(o.dataDir, ids, o.keyring, core.log);
      for (const id of ids) {
        const { report } = await openVolume({
          dir: o.dataDir,
          id,
          maxVolumeSize: o.maxVolumeSize,
          hooks: core.hooks,
          log: core.log,
          register: (v) => {
            v.keys = keys.get(v.id);
            core.volumes.set(v.id, v);
          },
          apply: (v, r) => core.applyRecord(v, r),
        });
        if (report.recovered || report.truncatedBytes || report.rebuilt || report.idxCut) {
          core.log.warn({ volumeId: id, ...report }, 'volume recovered');
        }
      }
      core.recomputeStats();
    } catch (err) {
      await core.close();
      throw err;
    }
    return new Store(core);
  }

  /** Largest content size a blob with this id can have here. */
  maxBlobSize(blobId: string): number {
    return this.core.maxBlobSize(blobId);
  }

  /** Starts writing a blob (store-write.ts has the rules). */
  beginWrite(blobId: string, cookie: bigint, size: number, opts: WriteOptions = {}): Promise<NeedleWriter> {
    return beginWrite(this.core, blobId, cookie, size, opts);
  }

  /** Opens a blob for reading. NotFoundError when absent, deleted, or the cookie differs. */
  openRead(blobId: string, cookie?: bigint): Promise<BlobReader> {
    return openRead(this.core, blobId, cookie);
  }

  /** The facts of the id's newest needle (store-read.ts). */
  stat(blobId: string, o: StatOptions = {}): Promise<NeedleFactsInfo> {
    return statNeedle(this.core, blobId, o);
  }

  /** Appends a durable tombstone; true when it superseded a live needle (store-delete.ts). */
  delete(blobId: string, o: DeleteOptions = {}): Promise<boolean> {
    return deleteNeedle(this.core, blobId, o);
  }

  /** Compacts one volume or every volume below the threshold (store-compact.ts). */
  compact(volumeId?: number, force = false): Promise<CompactionResult[]> {
    return compactVolumes(this.core, volumeId, force);
  }

  /** Verifies every indexed needle of one or all volumes. */
  scrub(volumeId?: number): Promise<ScrubReport> {
    return scrubVolumes(this.core, volumeId);
  }

  /** Ids of the KEKs wrapping some volume key on disk (empty for a plaintext store). */
  keksInUse(): Set<string> {
    return keksInUse(this.core);
  }

  /** Re-wraps every volume's keys under `ring`'s newest KEK, which becomes the store's keyring (store-keys.ts). */
  rewrapKeys(ring: Keyring): Promise<EngineRewrap> {
    return rewrapKeys(this.core, ring);
  }

  /** Live needles with blob id > `afterBlobId`, in blob id order, at most `limit`. */
  listNeedles(afterBlobId: string | undefined, limit: number): Promise<NeedleListing[]> {
    return listNeedles(this.core, afterBlobId, limit);
  }

  /** One page of a placement group's newest needles (store-list.ts). */
  listPlacementGroup(o: ListGroupOptions): Promise<GroupPage> {
    return listPlacementGroup(this.core, o);
  }

  /** Count and XOR digest per placement group, from one pass over the needle map. */
  placementDigests(groupCount: number): GroupDigest[] {
    return placementDigests(this.core, groupCount);
  }

  /**
   * Keeps live needle bytes per placement group among `groupCount` (the
   * cluster's, from the directory) from now on; see NeedleMap.trackGroups.
   */
  trackGroups(groupCount: number): void {
    this.core.map.trackGroups(groupCount);
  }

  /**
   * Live needle bytes (full needles and stubs, tombstones excluded) per placement
   * group holding any, in group order, and the group count they are numbered by
   * (0 and none before `trackGroups`). O(group count), no disk access.
   */
  liveBytesByGroup(): { groupCount: number; groups: { group: number; bytes: number }[] } {
    return { groupCount: this.core.map.trackedGroups, groups: this.core.map.liveBytesByGroup() };
  }

  async stats(): Promise<StoreStats> {
    const core = this.core;
    core.checkOpen();
    const fsStats = await fs.statfs(core.dataDir);
    const volumes: VolumeStatsInfo[] = core.orderedVolumes().map((v) => ({
      volumeId: v.id,
      sizeBytes: v.tail,
      liveBytes: v.liveBytes,
      needleCount: v.needleCount,
      deletedCount: Math.max(0, v.recordCount - v.needleCount),
      efficiency: core.efficiency(v),
      readOnly: v.readOnly || v.broken !== undefined,
      compacting: v.compacting,
    }));
    let used = 0;
    let needles = 0;
    for (const v of core.volumes.values()) {
      used += v.tail + v.idxTail;
      needles += v.needleCount;
    }
    const freeBytes = fsStats.bavail * fsStats.bsize;
    const canCreate = core.volumes.size < core.maxVolumes;
    return {
      capacityBytes: fsStats.blocks * fsStats.bsize,
      freeBytes,
      usedBytes: used,
      needleCount: needles,
      writable: freeBytes > 0 && ([...core.volumes.values()].some((v) => v.writable) || canCreate),
      volumes,
    };
  }

  /** Number of entries in the needle map (live + tombstones) and its table footprint. */
  mapInfo(): { entries: number; overflow: number; capacity: number; tableBytes: number } {
    const map = this.core.map;
    return {
      entries: map.size,
      overflow: map.overflowSize,
      capacity: map.capacity,
      tableBytes: map.tableBytes,
    };
  }

  /** Group-commit counters per volume (observability/tests). */
  commitStats(): { volumeId: number; flushes: number; items: number }[] {
    return this.core.orderedVolumes().map((v) => ({
      volumeId: v.id,
      flushes: v.committer.flushes,
      items: v.committer.items,
    }));
  }

  close(): Promise<void> {
    return this.core.close();
  }
}
