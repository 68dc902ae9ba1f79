import { type BlobMeta, BlobState, StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { LogEntry, MetadataSnapshot, StoreRecord } from '../../gen/haystack/v1/metadata_pb.js';
import type { StoreView } from './placement.js';

/**
 * The manager's copy of the directory metadata, fed by WatchMetadata: live blobs
 * (deleted ones are dropped), stores, and an index store → blobs so a store going
 * DOWN finds its blobs at once. Pure: apply() says what changed.
 */
export interface BlobView {
  blobId: string;
  cookie: bigint;
  size: bigint;
  sha256: Uint8Array;
  target: number;
  version: bigint;
  replicas: { storeId: string; volumeId: number }[];
}

export interface MirrorStore extends StoreView {
  capacityBytes: bigint;
}

export type MirrorChange =
  | { type: 'blob'; blobId: string }
  | { type: 'blob-deleted'; blobId: string; storeIds: string[] }
  | { type: 'store'; storeId: string; previous: StoreHealth | undefined; health: StoreHealth }
  | { type: 'none' };

export class LogGapError extends Error {
  constructor(applied: bigint, got: bigint) {
    super(`metadata log gap: applied ${applied}, next entry ${got}`);
    this.name = 'LogGapError';
  }
}

export class MetadataMirror {
  readonly blobs = new Map<string, BlobView>();
  readonly stores = new Map<string, MirrorStore>();
  private readonly byStore = new Map<string, Set<string>>();
  appliedIndex = 0n;
  term = 0n;
  /** Whether a snapshot or the log from index 1 has been applied (the view is whole). */
  loaded = false;

  /** Replaces everything with a snapshot. */
  applySnapshot(s: MetadataSnapshot): void {
    this.blobs.clear();
    this.byStore.clear();
    this.stores.clear();
    for (const st of s.stores) this.putStore(st);
    for (const b of s.blobs) if (b.state !== BlobState.DELETED) this.putBlob(b, b.version);
    this.appliedIndex = s.index;
    this.term = s.term;
    this.loaded = true;
  }

  /** Applies the next entry; entries already applied are ignored, a gap throws. */
  apply(e: LogEntry): MirrorChange {
    if (e.index <= this.appliedIndex) return { type: 'none' };
    if (e.index !== this.appliedIndex + 1n) throw new LogGapError(this.appliedIndex, e.index);
    this.appliedIndex = e.index;
    if (e.index === 1n) this.loaded = true;
    if (e.term > this.term) this.term = e.term;
    const c = e.change;
    switch (c.case) {
      case 'blobCommitted': {
        if (!c.value.blob) return { type: 'none' };
        this.putBlob(c.value.blob, e.index);
        return { type: 'blob', blobId: c.value.blob.blobId };
      }
      case 'blobDeleted': {
        const b = this.blobs.get(c.value.blobId);
        const storeIds = b ? b.replicas.map((r) => r.storeId) : [];
        if (b) this.dropBlob(b);
        return { type: 'blob-deleted', blobId: c.value.blobId, storeIds };
      }
      case 'replicasChanged': {
        const v = c.value;
        const b = this.blobs.get(v.blobId);
        if (!b) return { type: 'none' };
        const removed = new Set(v.removedStoreIds);
        b.replicas = b.replicas.filter((r) => !removed.has(r.storeId));
        for (const id of removed) this.unindex(id, b.blobId);
        for (const r of v.added) {
          if (b.replicas.some((x) => x.storeId === r.storeId)) continue;
          b.replicas.push({ storeId: r.storeId, volumeId: r.volumeId });
          this.index(r.storeId, b.blobId);
        }
        if (v.targetReplicaCount > 0) b.target = v.targetReplicaCount;
        b.version = e.index;
        return { type: 'blob', blobId: b.blobId };
      }
      case 'storeRegistered': {
        if (!c.value.store) return { type: 'none' };
        const prev = this.stores.get(c.value.store.storeId)?.health;
        const s = this.putStore(c.value.store);
        return { type: 'store', storeId: s.storeId, previous: prev, health: s.health };
      }
      case 'storeHealthChanged': {
        const s = this.stores.get(c.value.storeId);
        if (!s) return { type: 'none' };
        const prev = s.health;
        s.health = c.value.health;
        return { type: 'store', storeId: s.storeId, previous: prev, health: s.health };
      }
      default:
        return { type: 'none' };
    }
  }

  /** Blob ids with a replica on a store. */
  blobsOn(storeId: string): string[] {
    return [...(this.byStore.get(storeId) ?? [])];
  }

  /** Updates free space and health from a fresher source (GetClusterStatus). */
  refreshStore(rec: StoreRecord): void {
    const s = this.stores.get(rec.storeId);
    if (!s) {
      this.putStore(rec);
      return;
    }
    s.freeBytes = rec.freeBytes;
    s.capacityBytes = rec.capacityBytes;
    if (rec.address) s.address = rec.address;
  }

  private putStore(rec: StoreRecord): MirrorStore {
    const prev = this.stores.get(rec.storeId);
    const s: MirrorStore = {
      storeId: rec.storeId,
      address: rec.address,
      zone: rec.zone,
      health: rec.health === StoreHealth.UNSPECIFIED && prev ? prev.health : rec.health,
      freeBytes: rec.freeBytes,
      capacityBytes: rec.capacityBytes,
    };
    this.stores.set(rec.storeId, s);
    return s;
  }

  private putBlob(m: BlobMeta, version: bigint): void {
    const old = this.blobs.get(m.blobId);
    if (old) this.dropBlob(old);
    const seen = new Set<string>();
    const b: BlobView = {
      blobId: m.blobId,
      cookie: m.cookie,
      size: m.size,
      sha256: m.sha256,
      target: m.targetReplicaCount,
      version: m.version > 0n ? m.version : version,
      replicas: m.replicas
        .filter((r) => !seen.has(r.storeId) && seen.add(r.storeId))
        .map((r) => ({ storeId: r.storeId, volumeId: r.volumeId })),
    };
    this.blobs.set(b.blobId, b);
    for (const r of b.replicas) this.index(r.storeId, b.blobId);
  }

  private dropBlob(b: BlobView): void {
    this.blobs.delete(b.blobId);
    for (const r of b.replicas) this.unindex(r.storeId, b.blobId);
  }

  private index(storeId: string, blobId: string): void {
    let s = this.byStore.get(storeId);
    if (!s) {
      s = new Set();
      this.byStore.set(storeId, s);
    }
    s.add(blobId);
  }

  private unindex(storeId: string, blobId: string): void {
    const s = this.byStore.get(storeId);
    s?.delete(blobId);
    if (s?.size === 0) this.byStore.delete(storeId);
  }
}
