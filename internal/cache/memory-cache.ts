import type {
  BlobCache,
  CacheCounts,
  CachedBlob,
  CacheFill,
  CacheObserver,
  CacheStatsSnapshot,
  FillLease,
  WriteLease,
} from './blob-cache.js';

export interface MemoryCacheOptions {
  /** Entry lifetime. */
  ttlMs: number;
  /** Larger blobs are not cached. */
  maxBlobSize: number;
  /** Total bytes of content kept; least recently used entries go first. */
  maxBytes: number;
  /** How long a deletion refuses fill leases of the same id (BlobCache.lease; not what orders fills). */
  tombstoneMs?: number;
  /** Longest a fill lease lasts unused (liveness only: an expired lease just does not fill). */
  leaseMs?: number;
  now?: () => number;
  observe?: CacheObserver;
}

interface Entry {
  blob: CachedBlob;
  expiresAt: number;
}

/**
 * An in-process LRU blob cache with a TTL and a byte budget. Fills are ordered
 * after deletes by leases (BlobCache.set; Nishtala et al., NSDI 2013, §3.2.1), as
 * in the shared cache: its state goes with the process (and the reads), so no epoch.
 */
export class MemoryBlobCache implements BlobCache {
  readonly backend = 'memory' as const;
  readonly maxBlobSize: number;
  private readonly entries = new Map<string, Entry>();
  /** Id → when its tombstone ends. */
  private readonly tombstones = new Map<string, number>();
  /** Id → its lease's token and when the lease ends. */
  private readonly leases = new Map<string, { token: string; until: number }>();
  private lastToken = 0;
  private bytes = 0;
  private readonly counts: CacheCounts = { hits: 0, misses: 0 };
  private readonly now: () => number;

  constructor(private readonly opts: MemoryCacheOptions) {
    this.maxBlobSize = Math.min(opts.maxBlobSize, opts.maxBytes);
    this.now = opts.now ?? Date.now;
  }

  async get(blobId: string): Promise<CachedBlob | undefined> {
    const e = this.entries.get(blobId);
    if (e && e.expiresAt > this.now()) {
      // Move to the most recently used end.
      this.entries.delete(blobId);
      this.entries.set(blobId, e);
      this.counts.hits++;
      this.opts.observe?.('hit');
      return e.blob;
    }
    if (e) this.remove(blobId);
    this.counts.misses++;
    this.opts.observe?.('miss');
    return undefined;
  }

  async lease(blobId: string): Promise<FillLease> {
    const now = this.now();
    const e = this.entries.get(blobId);
    if (e && e.expiresAt > now) return { blobId };
    if ((this.tombstones.get(blobId) ?? 0) > now) return { blobId, refused: 'tombstone' };
    if ((this.leases.get(blobId)?.until ?? 0) > now) return { blobId, refused: 'lease_held' };
    const token = String(++this.lastToken);
    this.leases.set(blobId, { token, until: now + (this.opts.leaseMs ?? 10_000) });
    prune(this.leases, (l) => l.until, now);
    return { blobId, token, generation: 0 };
  }

  async writeLease(blobId: string): Promise<WriteLease> {
    // Replaces any lease, granted over a tombstone (BlobCache.writeLease).
    const now = this.now();
    const token = String(++this.lastToken);
    this.leases.set(blobId, { token, until: now + (this.opts.leaseMs ?? 10_000) });
    prune(this.leases, (l) => l.until, now);
    return { blobId, token, generation: 0 };
  }

  async release(lease: FillLease): Promise<void> {
    if (lease.token !== undefined && this.leases.get(lease.blobId)?.token === lease.token)
      this.leases.delete(lease.blobId);
  }

  async set(blob: CachedBlob, how: CacheFill): Promise<void> {
    const id = blob.meta.blobId;
    if (blob.data.length > this.maxBlobSize || blob.data.length !== blob.meta.size) return;
    const lease = 'push' in how ? how.push : how.lease;
    if (lease.token === undefined) {
      if (lease.refused) this.opts.observe?.('fill_dropped', lease.refused);
      return;
    }
    const held = this.leases.get(id);
    if (lease.blobId !== id || held?.token !== lease.token || held.until <= this.now())
      return this.opts.observe?.('fill_dropped', 'push' in how ? 'write_lease_lost' : 'lease_lost');
    // Landing ends the lease; a push's write stands over an earlier delete's tombstone.
    this.tombstones.delete(id);
    this.leases.delete(id);
    this.remove(id);
    this.entries.set(id, { blob, expiresAt: this.now() + this.opts.ttlMs });
    this.bytes += blob.data.length;
    for (const [oldId] of this.entries) {
      if (this.bytes <= this.opts.maxBytes) break;
      this.remove(oldId);
    }
  }

  async invalidate(blobId: string): Promise<void> {
    this.remove(blobId);
    // Revokes the lease: a read under way cannot fill (what orders fills after this delete).
    this.leases.delete(blobId);
    const now = this.now();
    this.tombstones.set(blobId, now + (this.opts.tombstoneMs ?? 60_000));
    prune(this.tombstones, (until) => until, now);
  }

  private remove(blobId: string): void {
    const e = this.entries.get(blobId);
    if (!e) return;
    this.entries.delete(blobId);
    this.bytes -= e.blob.data.length;
  }

  available(): boolean {
    return true;
  }

  sharedCommitIndex(): bigint {
    return 0n;
  }

  async publishCommitIndex(): Promise<void> {}

  /** Entries and bytes held (for tests and diagnostics). */
  size(): { entries: number; bytes: number } {
    return { entries: this.entries.size, bytes: this.bytes };
  }

  async stats(): Promise<CacheStatsSnapshot> {
    return { backend: 'memory', available: true, local: { ...this.counts }, cluster: { ...this.counts } };
  }

  async close(): Promise<void> {
    this.entries.clear();
    this.bytes = 0;
  }
}

/** Drops the ended items of a map grown past 100 000 (expired tombstones and leases). */
function prune<V>(m: Map<string, V>, until: (v: V) => number, now: number): void {
  if (m.size <= 100_000) return;
  for (const [id, v] of m) if (until(v) <= now) m.delete(id);
}
