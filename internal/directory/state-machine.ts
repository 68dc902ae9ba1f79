import { clone, create } from '@bufbuild/protobuf';
import {
  type BlobMeta,
  BlobMetaSchema,
  BlobState,
  type Replica,
  ReplicaSchema,
  StoreHealth,
} from '../../gen/haystack/v1/common_pb.js';
import {
  type LogEntry,
  type MetadataSnapshot,
  MetadataSnapshotSchema,
  type StoreRecord,
  StoreRecordSchema,
} from '../../gen/haystack/v1/metadata_pb.js';
import { PlacementState } from './placement-state.js';

/**
 * The directory's metadata as a deterministic state machine: every instance
 * applies the same log entries in index order and ends in the same state. Pure:
 * no clocks, no I/O, nothing but the entries.
 *
 * Deleted blobs stay (state DELETED) while tombstones are pending: their replica
 * list is the set of stores that still have to confirm the tombstone. Each
 * confirmation is a ReplicasChanged entry removing that store; the blob is purged
 * when the list is empty. So the tombstone queue is part of the replicated state
 * and survives a change of leader.
 */
export class MetadataState {
  readonly blobs = new Map<string, BlobMeta>();
  readonly stores = new Map<string, StoreRecord>();
  /** storeId → ids of deleted blobs whose tombstone that store has not confirmed. */
  readonly tombstones = new Map<string, Set<string>>();
  /** Every blob id in the map, sorted (for List). */
  private sorted: string[] = [];
  appliedIndex = 0n;
  appliedTerm = 0n;
  /** Leader of the latest LeaderChanged entry applied. */
  leaderId = '';
  leaderTerm = 0n;
  /** ACTIVE blobs. */
  liveBlobs = 0;
  /** Placement groups and extra replicas (empty on a cluster of per-blob records). */
  placement = new PlacementState();

  /**
   * perBlob false: per-blob entries (BlobCommitted, BlobDeleted, ReplicasChanged)
   * are skipped, as a gateway's placement view needs none of them.
   */
  constructor(private readonly opts: { perBlob?: boolean } = {}) {}

  /** Applies the next entry. Throws on an index that is not appliedIndex + 1. */
  apply(entry: LogEntry): void {
    if (entry.index !== this.appliedIndex + 1n) {
      throw new Error(`apply: entry ${entry.index} does not follow applied index ${this.appliedIndex}`);
    }
    const version = entry.index;
    const c = entry.change;
    const skip =
      this.opts.perBlob === false &&
      (c.case === 'blobCommitted' || c.case === 'blobDeleted' || c.case === 'replicasChanged');
    if (skip) {
      this.appliedIndex = entry.index;
      this.appliedTerm = entry.term;
      return;
    }
    switch (c.case) {
      case 'blobCommitted': {
        const incoming = c.value.blob;
        if (!incoming) break;
        const old = this.blobs.get(incoming.blobId);
        if (old) this.removeBlob(old.blobId);
        const blob = clone(BlobMetaSchema, incoming);
        blob.state = BlobState.ACTIVE;
        blob.version = version;
        blob.replicas = dedupeReplicas(blob.replicas);
        this.putBlob(blob);
        break;
      }
      case 'blobDeleted': {
        const blob = this.blobs.get(c.value.blobId);
        if (!blob || blob.state === BlobState.DELETED) break;
        blob.state = BlobState.DELETED;
        blob.version = version;
        this.liveBlobs--;
        if (blob.replicas.length === 0) this.removeBlob(blob.blobId);
        else for (const r of blob.replicas) this.addTombstone(r.storeId, blob.blobId);
        break;
      }
      case 'replicasChanged': {
        const v = c.value;
        const blob = this.blobs.get(v.blobId);
        if (!blob) break;
        blob.version = version;
        if (blob.state === BlobState.ACTIVE) {
          for (const r of v.added) {
            if (!blob.replicas.some((x) => x.storeId === r.storeId)) {
              blob.replicas.push(create(ReplicaSchema, { storeId: r.storeId, volumeId: r.volumeId }));
            }
          }
        }
        if (v.removedStoreIds.length > 0) {
          const gone = new Set(v.removedStoreIds);
          blob.replicas = blob.replicas.filter((r) => !gone.has(r.storeId));
          if (blob.state === BlobState.DELETED) {
            for (const s of gone) this.dropTombstone(s, blob.blobId);
            if (blob.replicas.length === 0) this.removeBlob(blob.blobId);
          }
        }
        if (v.targetReplicaCount > 0) blob.targetReplicaCount = v.targetReplicaCount;
        break;
      }
      case 'storeRegistered': {
        const rec = c.value.store;
        if (!rec) break;
        const copy = clone(StoreRecordSchema, rec);
        // Heartbeats re-register a store; only StoreDrainChanged sets its drain.
        copy.draining = this.stores.get(rec.storeId)?.draining ?? false;
        this.stores.set(rec.storeId, copy);
        break;
      }
      case 'storeDrainChanged': {
        const rec = this.stores.get(c.value.storeId);
        if (rec) rec.draining = c.value.draining;
        break;
      }
      case 'storeHealthChanged': {
        const rec = this.stores.get(c.value.storeId);
        if (rec) rec.health = c.value.health;
        break;
      }
      case 'placementChanged':
        this.placement.applyPlacement(c.value, entry.index);
        break;
      case 'extraReplicasChanged':
        this.placement.applyExtras(c.value);
        break;
      case 'leaderChanged':
        this.leaderId = c.value.leaderId;
        this.leaderTerm = entry.term;
        break;
      default:
        break;
    }
    this.appliedIndex = entry.index;
    this.appliedTerm = entry.term;
  }

  private putBlob(blob: BlobMeta): void {
    const existed = this.blobs.has(blob.blobId);
    this.blobs.set(blob.blobId, blob);
    if (!existed) this.sorted.splice(lowerBound(this.sorted, blob.blobId), 0, blob.blobId);
    if (blob.state === BlobState.ACTIVE) this.liveBlobs++;
  }

  private removeBlob(id: string): void {
    const blob = this.blobs.get(id);
    if (!blob) return;
    if (blob.state === BlobState.ACTIVE) this.liveBlobs--;
    for (const r of blob.replicas) this.dropTombstone(r.storeId, id);
    this.blobs.delete(id);
    const i = lowerBound(this.sorted, id);
    if (this.sorted[i] === id) this.sorted.splice(i, 1);
  }

  private addTombstone(storeId: string, blobId: string): void {
    let set = this.tombstones.get(storeId);
    if (!set) {
      set = new Set();
      this.tombstones.set(storeId, set);
    }
    set.add(blobId);
  }

  private dropTombstone(storeId: string, blobId: string): void {
    const set = this.tombstones.get(storeId);
    if (!set) return;
    set.delete(blobId);
    if (set.size === 0) this.tombstones.delete(storeId);
  }

  /** The ACTIVE blob with this id, if any. */
  active(id: string): BlobMeta | undefined {
    const b = this.blobs.get(id);
    return b?.state === BlobState.ACTIVE ? b : undefined;
  }

  /** ACTIVE blobs with ids > `after` and the prefix, in id order, at most `limit` (+ whether more exist). */
  list(prefix: string, after: string, limit: number): { blobs: BlobMeta[]; more: boolean } {
    const start = after > prefix ? after : prefix;
    let i = lowerBound(this.sorted, start);
    const out: BlobMeta[] = [];
    for (; i < this.sorted.length; i++) {
      const id = this.sorted[i] as string;
      if (id <= after) continue;
      if (!id.startsWith(prefix)) break;
      const b = this.blobs.get(id);
      if (!b || b.state !== BlobState.ACTIVE) continue;
      if (out.length === limit) return { blobs: out, more: true };
      out.push(b);
    }
    return { blobs: out, more: false };
  }

  /** Live blobs by replica count. */
  replicaHistogram(): Map<number, number> {
    const h = new Map<number, number>();
    for (const b of this.blobs.values()) {
      if (b.state !== BlobState.ACTIVE) continue;
      h.set(b.replicas.length, (h.get(b.replicas.length) ?? 0) + 1);
    }
    return h;
  }

  storeHealth(storeId: string): StoreHealth {
    return this.stores.get(storeId)?.health ?? StoreHealth.UNSPECIFIED;
  }

  toSnapshot(): MetadataSnapshot {
    const placement = this.placement.snapshotParts();
    return create(MetadataSnapshotSchema, {
      index: this.appliedIndex,
      term: this.appliedTerm,
      blobs: this.sorted.map((id) => clone(BlobMetaSchema, this.blobs.get(id) as BlobMeta)),
      stores: [...this.stores.values()]
        .sort((a, b) => (a.storeId < b.storeId ? -1 : a.storeId > b.storeId ? 1 : 0))
        .map((s) => clone(StoreRecordSchema, s)),
      placementGroupCount: placement.groupCount,
      placementGroups: placement.groups,
      extraReplicas: placement.extras,
    });
  }

  static fromSnapshot(snap: MetadataSnapshot, opts: { perBlob?: boolean } = {}): MetadataState {
    const s = new MetadataState(opts);
    for (const b of opts.perBlob === false ? [] : snap.blobs) {
      const blob = clone(BlobMetaSchema, b);
      s.putBlob(blob);
      if (blob.state === BlobState.DELETED)
        for (const r of blob.replicas) s.addTombstone(r.storeId, blob.blobId);
    }
    for (const st of snap.stores) s.stores.set(st.storeId, clone(StoreRecordSchema, st));
    s.placement = PlacementState.fromSnapshot(
      snap.placementGroupCount,
      snap.placementGroups,
      snap.extraReplicas,
    );
    s.appliedIndex = snap.index;
    s.appliedTerm = snap.term;
    return s;
  }
}

function dedupeReplicas(replicas: Replica[]): Replica[] {
  const seen = new Set<string>();
  return replicas.filter((r) => {
    if (seen.has(r.storeId)) return false;
    seen.add(r.storeId);
    return true;
  });
}

/** First position in sorted `arr` whose value is >= `key`. */
export function lowerBound(arr: readonly string[], key: string): number {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((arr[mid] as string) < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Two blobs hold the same content (the idempotency test of CommitWrite). */
export function sameContent(a: BlobMeta, b: { cookie: bigint; size: bigint; sha256: Uint8Array }): boolean {
  return a.cookie === b.cookie && a.size === b.size && Buffer.from(a.sha256).equals(Buffer.from(b.sha256));
}
