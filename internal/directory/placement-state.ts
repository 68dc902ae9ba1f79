import { clone, create } from '@bufbuild/protobuf';
import { type Replica, ReplicaSchema } from '../../gen/haystack/v1/common_pb.js';
import {
  type ExtraReplicas,
  type ExtraReplicasChanged,
  ExtraReplicasSchema,
  type PlacementChanged,
  type PlacementGroup,
  PlacementGroupSchema,
  PlacementMemberState,
} from '../../gen/haystack/v1/metadata_pb.js';
import { placementGroupOf } from '../common/placement.js';

/**
 * The placement part of the directory's replicated state: placement groups → member
 * stores, and the few blobs with extra replicas (hot blobs). Pure, applied in log
 * order like the rest of MetadataState.
 *
 * Memory: one PlacementGroup per group (~100 B with three members) plus one
 * ExtraReplicas per hot blob; nothing per ordinary blob. At 65 536 groups and
 * 100 000 hot blobs that is ~25 MB whatever the number of blobs stored.
 */
export class PlacementState {
  /** 0 until the first PlacementChanged. */
  groupCount = 0;
  /** Index = group number. */
  readonly groups: PlacementGroup[] = [];
  /** Blob id → its extra replicas and raised target. */
  readonly extras = new Map<string, ExtraReplicas>();

  get enabled(): boolean {
    return this.groupCount > 0;
  }

  /** Applies a PlacementChanged entry at log index `index` (the changed groups' new epoch). */
  applyPlacement(c: PlacementChanged, index: bigint): void {
    if (this.groupCount === 0 && c.groupCount > 0) this.groupCount = c.groupCount;
    for (const g of c.groups) {
      if (g.group >= this.groupCount) continue; // never produced by a leader; ignored like an unknown id
      const copy = clone(PlacementGroupSchema, g);
      copy.epoch = index;
      this.groups[g.group] = copy;
    }
  }

  /** Applies an ExtraReplicasChanged entry. */
  applyExtras(c: ExtraReplicasChanged): void {
    if (c.clear) {
      this.extras.delete(c.blobId);
      return;
    }
    const rec = this.extras.get(c.blobId) ?? create(ExtraReplicasSchema, { blobId: c.blobId });
    for (const r of c.added) {
      if (!rec.replicas.some((x) => x.storeId === r.storeId)) {
        rec.replicas.push(create(ReplicaSchema, { storeId: r.storeId, volumeId: r.volumeId }));
      }
    }
    if (c.removedStoreIds.length > 0) {
      const gone = new Set(c.removedStoreIds);
      rec.replicas = rec.replicas.filter((r) => !gone.has(r.storeId));
    }
    if (c.targetReplicaCount > 0) rec.targetReplicaCount = c.targetReplicaCount;
    const group = this.groupCount > 0 ? this.groupFor(c.blobId) : undefined;
    const base = group?.members.length ?? 0;
    // A record that adds nothing (no extra copy, target at or below the group's size) is dropped.
    if (rec.replicas.length === 0 && rec.targetReplicaCount <= base) this.extras.delete(c.blobId);
    else this.extras.set(c.blobId, rec);
  }

  /** The group a blob id belongs to (undefined before placement exists). */
  groupFor(blobId: string): PlacementGroup | undefined {
    if (this.groupCount === 0) return undefined;
    return this.groups[placementGroupOf(blobId, this.groupCount)];
  }

  /** Store ids that hold (or are being filled with) a blob: group members then extras. */
  holders(blobId: string): { group: PlacementGroup | undefined; extras: Replica[] } {
    return { group: this.groupFor(blobId), extras: this.extras.get(blobId)?.replicas ?? [] };
  }

  /** Groups in which the store is a member. */
  groupsOf(storeId: string): PlacementGroup[] {
    return this.groups.filter((g) => g?.members.some((m) => m.storeId === storeId));
  }

  /** Blobs by replica count as the directory knows them: only exceptions are counted per blob. */
  extraHistogram(): Map<number, number> {
    const h = new Map<number, number>();
    for (const rec of this.extras.values()) {
      const n = (this.groupFor(rec.blobId)?.members.length ?? 0) + rec.replicas.length;
      h.set(n, (h.get(n) ?? 0) + 1);
    }
    return h;
  }

  /** For MetadataSnapshot: groups in order, extras in id order. */
  snapshotParts(): { groupCount: number; groups: PlacementGroup[]; extras: ExtraReplicas[] } {
    return {
      groupCount: this.groupCount,
      groups: this.groups.filter(Boolean).map((g) => clone(PlacementGroupSchema, g)),
      extras: [...this.extras.keys()].sort().map((id) => clone(ExtraReplicasSchema, this.extras.get(id)!)),
    };
  }

  static fromSnapshot(groupCount: number, groups: PlacementGroup[], extras: ExtraReplicas[]): PlacementState {
    const s = new PlacementState();
    s.groupCount = groupCount;
    for (const g of groups) s.groups[g.group] = clone(PlacementGroupSchema, g);
    for (const e of extras) s.extras.set(e.blobId, clone(ExtraReplicasSchema, e));
    return s;
  }
}

/** True when the member serves reads of its group. */
export function readable(state: PlacementMemberState): boolean {
  return state === PlacementMemberState.ACTIVE;
}
