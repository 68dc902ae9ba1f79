/**
 * The gateway's blob cache: read-through and push-on-write for small blobs.
 * Implementations never throw: a cache that cannot answer is a miss, a write
 * that cannot land is dropped, so the read and write paths work without it.
 */

/** What the cache keeps about a blob besides its bytes. */
export interface CachedBlobMeta {
  blobId: string;
  size: number;
  /** SHA-256 of the content, lower-case hex. */
  sha256: string;
  contentType: string;
  createdAtMs: number;
  cookie: bigint;
  replicaCount: number;
  targetReplicaCount: number;
  /** The original file name, when one was given. */
  fileName?: string;
}

/** How a blob reaches the cache: a fresh write, or a read-through fill and its age. */
export type CacheFill = { fresh: true } | { readAgeMs: number };

/**
 * Whether a read-through fill is too old to be ordered after every deletion's
 * tombstone (`tombstoneMs` long): older than half of it, with room for clock rates.
 */
export function fillTooOld(how: CacheFill, tombstoneMs: number): boolean {
  return 'readAgeMs' in how && !(how.readAgeMs >= 0 && how.readAgeMs < tombstoneMs / 2);
}

/**
 * Why a read-through fill was not cached (BlobCache.set):
 * - `too_old`: its read began more than half the tombstone time ago (fillTooOld);
 * - `before_epoch`: its read began before this process learned the shared cache's
 *   current epoch, or no epoch is known (the cache's state may have been lost since);
 * - `epoch_changed`: the shared cache's epoch is missing or not the one this process holds;
 * - `tombstone`: the id was deleted within the tombstone time.
 */
export type FillDropReason = 'too_old' | 'before_epoch' | 'epoch_changed' | 'tombstone';

/** What a shared cache's fence needs to judge a fill locally (monotonic ms, performance.now()). */
export interface EpochFence {
  nowMs: number;
  /** When this process last learned the cache's epoch; undefined while it knows none. */
  epochLearnedAtMs: number | undefined;
}

/**
 * The part of the fill rule (BlobCache.set) decided before the cache is asked:
 * why a fill must be dropped, or undefined to send it. Fresh writes always go.
 * `fence` for a shared cache with an epoch; none for an in-process one.
 */
export function fillDropReason(
  how: CacheFill,
  tombstoneMs: number,
  fence?: EpochFence,
): FillDropReason | undefined {
  if (!('readAgeMs' in how)) return undefined;
  if (fillTooOld(how, tombstoneMs)) return 'too_old';
  if (fence) {
    const readBegan = fence.nowMs - how.readAgeMs;
    if (fence.epochLearnedAtMs === undefined || !(readBegan > fence.epochLearnedAtMs)) return 'before_epoch';
  }
  return undefined;
}

export interface CachedBlob {
  meta: CachedBlobMeta;
  data: Uint8Array;
}

export interface CacheCounts {
  hits: number;
  misses: number;
}

export interface CacheStatsSnapshot {
  backend: CacheBackend;
  /** False while the backing store is unreachable (everything bypasses the cache). */
  available: boolean;
  /** This process since it started. */
  local: CacheCounts;
  /** Every process sharing the cache (equal to local for an in-process cache). */
  cluster: CacheCounts;
}

export type CacheBackend = 'redis' | 'memory' | 'none';

export interface BlobCache {
  readonly backend: CacheBackend;
  /** Larger blobs are never cached. */
  readonly maxBlobSize: number;
  /** A cached blob, or undefined (counted as a hit or a miss). */
  get(blobId: string): Promise<CachedBlob | undefined>;
  /**
   * Caches a blob (dropped when larger than maxBlobSize).
   * - `{ fresh: true }`: a blob just written; it replaces a recent deletion of the id.
   * - `{ readAgeMs }`: a read-through fill, with the time (ms) since its read began.
   *   A deletion leaves a tombstone for TOMBSTONE_MS that refuses fills; a fill whose
   *   read began more than half that long ago is dropped too, so a read that began
   *   before a delete can never land after the tombstone expired, however slowly its
   *   caller read (issue 14: no resurrection by a cache fill).
   *   A shared cache also fences fills by an epoch, so a tombstone lost with the cache's
   *   state (Redis restarted empty, a failover to a replica missing recent writes, a
   *   flush) cannot let such a read land either. The cache holds a random epoch value
   *   (created when missing); this process learns it on every (re)connection and
   *   whenever a fill finds it missing or changed, and notes the monotonic time it did.
   *   A fill is dropped when its read began before that time or no epoch is known, and
   *   refused by the cache (atomically with the tombstone check) when the epoch it
   *   carries is missing there or differs; a refusal makes this process re-learn it.
   *   A deletion acknowledged before the state was lost predates the reconnection (or
   *   the new epoch), so every read that could have begun before it is dropped.
   *   Fresh writes land regardless (and make this process re-learn a missing epoch).
   *   Dropped fills are reported to the observer as 'fill_dropped' with a reason.
   */
  set(blob: CachedBlob, how: CacheFill): Promise<void>;
  /** Forgets a blob (on delete). */
  invalidate(blobId: string): Promise<void>;
  available(): boolean;
  /**
   * The highest directory commit index any gateway sharing this cache published,
   * as last seen (refreshed by every get; 0 for an in-process cache). Gateways pass
   * it as Locate's min_index: a write through one gateway is visible through all.
   */
  sharedCommitIndex(): bigint;
  /** Publishes a commit index (raising the shared one). */
  publishCommitIndex(index: bigint): Promise<void>;
  stats(): Promise<CacheStatsSnapshot>;
  close(): Promise<void>;
}

/**
 * Called on every lookup and every dropped fill; the gateway feeds its Prometheus counters from it.
 * 'integrity_failure': an entry whose HMAC did not match (also counted as a miss).
 * 'fill_dropped': a read-through fill not cached, with its reason (not a lookup).
 */
export type CacheObserver = (
  event: 'hit' | 'miss' | 'integrity_failure' | 'fill_dropped',
  reason?: FillDropReason,
) => void;

export function hitRate(c: CacheCounts): number {
  const total = c.hits + c.misses;
  return total === 0 ? 0 : c.hits / total;
}

/** A cache that caches nothing (CACHE_BACKEND=none): every lookup is a miss. */
export class NoCache implements BlobCache {
  readonly backend = 'none' as const;
  readonly maxBlobSize = 0;
  private readonly counts: CacheCounts = { hits: 0, misses: 0 };

  constructor(private readonly observe?: CacheObserver) {}

  async get(): Promise<undefined> {
    this.counts.misses++;
    this.observe?.('miss');
    return undefined;
  }
  async set(): Promise<void> {}
  async invalidate(): Promise<void> {}
  available(): boolean {
    return true;
  }
  sharedCommitIndex(): bigint {
    return 0n;
  }
  async publishCommitIndex(): Promise<void> {}
  async stats(): Promise<CacheStatsSnapshot> {
    return { backend: 'none', available: true, local: { ...this.counts }, cluster: { ...this.counts } };
  }
  async close(): Promise<void> {}
}
