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

/**
 * A right to fill one blob id from a read, granted on a miss before the read
 * begins: the lease of Nishtala et al., "Scaling Memcache at Facebook" (NSDI 2013,
 * §3.2.1). A delete of the id (or a write lease of it) revokes it, so a fill that
 * still holds its lease began its read after every delete of the id that the cache
 * saw: the ordering rests on the lease, never on a clock. Opaque to callers.
 * The same token also carries a write's push (WriteLease, BlobCache.writeLease).
 */
export type FillLease =
  | {
      readonly blobId: string;
      /** The random value the cache stored for this lease. */
      readonly token: string;
      /** Which epoch generation of this process it was granted under (0 for an in-process cache). */
      readonly generation: number;
    }
  | {
      readonly blobId: string;
      readonly token?: undefined;
      /** Why none was granted; undefined when the cache had nothing to say (down, already filled). */
      readonly refused?: FillDropReason;
    };

/**
 * The lease of a write's push-on-write (BlobCache.writeLease): taken before the write
 * can commit, so a delete acknowledged after the commit has revoked it.
 */
export type WriteLease = FillLease;

/** How a blob reaches the cache: a write's push under its write lease, or a read-through fill under its lease. */
export type CacheFill = { push: WriteLease } | { lease: FillLease };

/**
 * Why a read-through fill or a write's push was not cached (BlobCache.set):
 * - `lease_lost`: a fill's lease is gone or another (revoked by a delete or a write,
 *   expired, evicted, or lost with the cache's state);
 * - `write_lease_lost`: a push's write lease is gone or another (revoked by a delete
 *   acknowledged after the write committed, taken over by another write of the id,
 *   expired, evicted, or lost with the cache's state);
 * - `lease_held`: no lease was granted, another read of the id holds it;
 * - `tombstone`: no lease was granted, the id was deleted moments ago;
 * - `before_epoch`: its lease was granted before this process learned the shared
 *   cache's current epoch, or no epoch is known (the cache's state may have been lost since);
 * - `epoch_changed`: the shared cache's epoch is missing or not the one this process holds;
 * - `index_missing`: no lease was granted, the shared commit index is missing (the cache
 *   lost its state) and not yet restored from the directory leader's.
 */
export type FillDropReason =
  | 'lease_lost'
  | 'write_lease_lost'
  | 'lease_held'
  | 'tombstone'
  | 'before_epoch'
  | 'epoch_changed'
  | 'index_missing';

/**
 * A shared cache could not be told of a delete (not connected, or the command failed or
 * timed out): UNAVAILABLE (rpc/errors.ts maps it), so the delete is not acknowledged and
 * its retry tells the cache. `where` names the cache without credentials.
 */
export class CacheUnreachableError extends Error {
  readonly code = 'UNAVAILABLE' as const;
  constructor(
    readonly where: string,
    readonly why: string,
    message = `the blob cache at ${where} could not be reached (${why})`,
  ) {
    super(message);
  }
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
  /** A cached blob, or undefined (counted as a hit or a miss). One round trip, no lease. */
  get(blobId: string): Promise<CachedBlob | undefined>;
  /**
   * After a miss, before the read of the blob begins: a lease to fill the cache
   * with what the read returns (FillLease; Nishtala et al., NSDI 2013, §3.2.1). One
   * lease per id at a time: while another read (or a write) holds it, or a delete of the id left
   * its tombstone, none is granted (the read still goes on, it just will not fill).
   * A shared cache also hands back the shared commit index (see sharedCommitIndex),
   * so the read asks the directory for every delete acknowledged before the grant.
   */
  lease(blobId: string): Promise<FillLease>;
  /**
   * Before a write of the id can commit (the gateway awaits it before ending the
   * stores' stream): the lease its push-on-write will land under. It replaces any lease
   * of the id (a fill's read may predate the write) and is granted over a tombstone:
   * a delete leaves its tombstone only once it was applied (stores, directory), so a
   * tombstone present at the grant is of a delete complete before this write could
   * commit anywhere, and a write committed after a delete stands (a re-upload): once
   * acknowledged, it is the id's content. Refusing would only cost the push.
   * A delete acknowledged after the commit deletes the lease (its invalidation runs
   * after its store deletes, so after the commit, so after this grant): the push is
   * then dropped (`write_lease_lost`), never landing after the delete. No token (the
   * cache down or slow, no epoch known): the write goes on without a push.
   */
  writeLease(blobId: string): Promise<WriteLease>;
  /** Gives back a lease that will not be used (a range, too large, a failed read or write): others may fill. */
  release(lease: FillLease): Promise<void>;
  /**
   * Caches a blob (dropped when larger than maxBlobSize).
   * - `{ push }`: a blob just written, under its write lease: it lands only if that lease
   *   is still the id's lease (the same check as a fill's, in the same script), and then
   *   clears the id's tombstone.
   * - `{ lease }`: a read-through fill. It lands only if its lease is still the id's
   *   lease, atomically with setting the entry (which ends the lease). A delete revokes
   *   the lease (and leaves a tombstone refusing new ones for a while), so a read that
   *   began before a delete can never fill after it, however long the read or a pause
   *   before the fill took: issue 14, no resurrection by a cache fill. A lost lease
   *   (deleted, expired, evicted, lost with the cache's state) means no fill; time
   *   decides only whether a fill happens, never whether it is safe.
   *   A shared cache also fences fills (pushes alike) by an epoch, for a cache that loses writes
   *   without losing every lease (a failover to a replica missing the delete's revocation):
   *   it holds a random epoch value (created when missing); this process learns it on
   *   every (re)connection and whenever a fill or lease finds it missing or changed,
   *   counting generations. A fill whose lease was granted under an earlier generation
   *   (or while no epoch is known) is dropped, and the cache refuses one whose epoch is
   *   missing there or differs (atomically with the lease check); a refusal makes this
   *   process re-learn it. A failover breaks every connection, so every lease granted
   *   before it is dropped.
   *   Dropped fills and pushes are reported to the observer as 'fill_dropped' with a reason.
   */
  set(blob: CachedBlob, how: CacheFill): Promise<void>;
  /**
   * Forgets a blob (on delete): the entry and its lease go, a tombstone is left. A shared
   * cache rejects with CacheUnreachableError when this did not reach it, so the delete is
   * not acknowledged (other gateways would still serve the entry); in-process ones never reject.
   */
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
 * 'fill_dropped': a read-through fill or a write's push not cached, with its reason (not a lookup).
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
  async lease(blobId: string): Promise<FillLease> {
    return { blobId };
  }
  async writeLease(blobId: string): Promise<WriteLease> {
    return { blobId };
  }
  async release(): Promise<void> {}
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
