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
   * Caches a blob (dropped when larger than maxBlobSize). `fresh` marks a blob just
   * written: it replaces a recent deletion of the same id; a read-through fill
   * (fresh false) never resurrects a blob deleted moments ago.
   */
  set(blob: CachedBlob, opts?: { fresh?: boolean }): Promise<void>;
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

/** Called on every lookup; the gateway feeds its Prometheus counters from it. */
export type CacheObserver = (event: 'hit' | 'miss') => void;

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
