import type { BlobMeta } from '../../gen/haystack/v1/common_pb.js';
import type { LogEntry, MetadataSnapshot, StoreRecord } from '../../gen/haystack/v1/metadata_pb.js';
import type { PlacementState } from '../directory/placement-state.js';
import { MetadataState } from '../directory/state-machine.js';

/**
 * The manager's copy of the directory metadata, fed by WatchMetadata. The state
 * itself is the directory's own state machine (MetadataState), so both apply the
 * log identically; this wrapper adds what the manager needs on top: what each
 * entry changed, and an index store → live blobs so a store going DOWN finds its
 * blobs at once.
 */
export type MirrorChange =
  | { type: 'blob'; blobId: string }
  | { type: 'blob-deleted'; blobId: string; storeIds: string[] }
  | { type: 'store'; storeId: string; previous: number | undefined; health: number }
  | { type: 'placement'; groups: number[] }
  | { type: 'extras'; blobId: string }
  | { type: 'none' };

export class LogGapError extends Error {
  constructor(applied: bigint, got: bigint) {
    super(`metadata log gap: applied ${applied}, next entry ${got}`);
    this.name = 'LogGapError';
  }
}

export class MetadataMirror {
  private state = new MetadataState();
  private readonly byStore = new Map<string, Set<string>>();
  /** Whether a snapshot or the log from index 1 has been applied (the view is whole). */
  loaded = false;

  get appliedIndex(): bigint {
    return this.state.appliedIndex;
  }

  get term(): bigint {
    return this.state.appliedTerm;
  }

  /** Registered stores (StoreRecord is a placement StoreView). */
  get stores(): ReadonlyMap<string, StoreRecord> {
    return this.state.stores;
  }

  /** Placement groups and extra replicas; `enabled` once the directory runs in placement mode. */
  get placement(): PlacementState {
    return this.state.placement;
  }

  /** The live (ACTIVE) blob, if any. */
  blob(id: string): BlobMeta | undefined {
    return this.state.active(id);
  }

  /** Every live blob. */
  *liveBlobs(): IterableIterator<BlobMeta> {
    for (const b of this.state.blobs.values()) if (this.state.active(b.blobId)) yield b;
  }

  get liveCount(): number {
    return this.state.liveBlobs;
  }

  /** Replaces everything with a snapshot. */
  applySnapshot(s: MetadataSnapshot): void {
    this.state = MetadataState.fromSnapshot(s);
    this.byStore.clear();
    for (const b of this.liveBlobs()) for (const r of b.replicas) this.index(r.storeId, b.blobId);
    this.loaded = true;
  }

  /** Applies the next entry; entries already applied are ignored, a gap throws. */
  apply(e: LogEntry): MirrorChange {
    if (e.index <= this.state.appliedIndex) return { type: 'none' };
    if (e.index !== this.state.appliedIndex + 1n) throw new LogGapError(this.state.appliedIndex, e.index);
    const c = e.change;
    const blobId =
      c.case === 'blobCommitted'
        ? c.value.blob?.blobId
        : c.case === 'blobDeleted' || c.case === 'replicasChanged'
          ? c.value.blobId
          : undefined;
    const storeId =
      c.case === 'storeRegistered'
        ? c.value.store?.storeId
        : c.case === 'storeHealthChanged'
          ? c.value.storeId
          : undefined;
    const before = blobId !== undefined ? this.holders(blobId) : [];
    const prevHealth = storeId !== undefined ? this.state.stores.get(storeId)?.health : undefined;
    this.state.apply(e);
    if (e.index === 1n) this.loaded = true;
    if (blobId !== undefined) {
      const after = this.holders(blobId);
      for (const s of before) if (!after.includes(s)) this.unindex(s, blobId);
      for (const s of after) this.index(s, blobId);
      if (c.case === 'blobDeleted') return { type: 'blob-deleted', blobId, storeIds: before };
      return this.blob(blobId) ? { type: 'blob', blobId } : { type: 'none' };
    }
    if (c.case === 'placementChanged')
      return { type: 'placement', groups: c.value.groups.map((g) => g.group) };
    if (c.case === 'extraReplicasChanged') return { type: 'extras', blobId: c.value.blobId };
    if (storeId !== undefined) {
      const s = this.state.stores.get(storeId);
      if (!s) return { type: 'none' };
      return { type: 'store', storeId, previous: prevHealth, health: s.health };
    }
    return { type: 'none' };
  }

  private holders(blobId: string): string[] {
    return this.blob(blobId)?.replicas.map((r) => r.storeId) ?? [];
  }

  /** Live blob ids with a replica on a store. */
  blobsOn(storeId: string): string[] {
    return [...(this.byStore.get(storeId) ?? [])];
  }

  /** Updates free space (and address) from a fresher source (GetClusterStatus). */
  refreshStore(rec: StoreRecord): void {
    const s = this.state.stores.get(rec.storeId);
    if (!s) return;
    s.freeBytes = rec.freeBytes;
    s.capacityBytes = rec.capacityBytes;
    if (rec.address) s.address = rec.address;
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
