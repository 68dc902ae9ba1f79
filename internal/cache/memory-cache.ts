import {
  type BlobCache,
  type CacheCounts,
  type CachedBlob,
  type CacheFill,
  type CacheObserver,
  type CacheStatsSnapshot,
  fillDropReason,
} from './blob-cache.js';

export interface MemoryCacheOptions {
  /** Entry lifetime. */
  ttlMs: number;
  /** Larger blobs are not cached. */
  maxBlobSize: number;
  /** Total bytes of content kept; least recently used entries go first. */
  maxBytes: number;
  /** How long a deletion keeps read-through fills of the same id out. */
  tombstoneMs?: number;
  now?: () => number;
  observe?: CacheObserver;
}

interface Entry {
  blob: CachedBlob;
  expiresAt: number;
}

/** An in-process LRU blob cache with a TTL and a byte budget. */
export class MemoryBlobCache implements BlobCache {
  readonly backend = 'memory' as const;
  readonly maxBlobSize: number;
  private readonly entries = new Map<string, Entry>();
  private readonly tombstones = new Map<string, number>();
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

  async set(blob: CachedBlob, how: CacheFill): Promise<void> {
    const id = blob.meta.blobId;
    if (blob.data.length > this.maxBlobSize || blob.data.length !== blob.meta.size) return;
    // In-process: its state goes with the process (and the reads), so no epoch fence.
    const dropped = fillDropReason(how, this.opts.tombstoneMs ?? 60_000);
    if (dropped) return this.opts.observe?.('fill_dropped', dropped);
    const fresh = 'fresh' in how;
    const tomb = this.tombstones.get(id);
    if (tomb !== undefined) {
      if (fresh || tomb <= this.now()) this.tombstones.delete(id);
      else return this.opts.observe?.('fill_dropped', 'tombstone');
    }
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
    this.tombstones.set(blobId, this.now() + (this.opts.tombstoneMs ?? 60_000));
    if (this.tombstones.size > 100_000) {
      const now = this.now();
      for (const [id, until] of this.tombstones) if (until <= now) this.tombstones.delete(id);
    }
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
