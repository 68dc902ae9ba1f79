import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { BlobMetaSchema, BlobState } from '../../gen/haystack/v1/common_pb.js';
import {
  type DirectoryServiceDeleteResponse,
  DirectoryServiceDeleteResponseSchema,
  type UpdatePlacementRequest,
  type UpdatePlacementResponse,
  UpdatePlacementResponseSchema,
  type UpdateReplicasRequest,
  type UpdateReplicasResponse,
  UpdateReplicasResponseSchema,
} from '../../gen/haystack/v1/directory_pb.js';
import { PlacementGroupSchema, type StoreRecord } from '../../gen/haystack/v1/metadata_pb.js';
import { PlacementPendingError, VersionMismatchError, WrongModeError } from './errors.js';
import type { DirectoryNode } from './node.js';
import { checkEcMembers, checkMembers, withEcMembers, withMembers } from './placement-plan.js';
import type { StoreRegistry } from './stores.js';

/**
 * The DirectoryService writes of a cluster with placement groups (leader only;
 * DirectoryHandlers forwards and serialises per blob). The directory holds no
 * per-blob record here: only placement groups and hot blobs' extra replicas.
 */
export class PlacementHandlers {
  constructor(
    private readonly node: DirectoryNode,
    private readonly stores: StoreRegistry,
  ) {}

  get enabled(): boolean {
    return this.node.state.placement.enabled;
  }

  /** For per-blob RPCs that have no meaning with placement groups (FAILED_PRECONDITION). */
  static perBlobRefused(method: string): WrongModeError {
    return new WrongModeError(
      `${method} is not used on a cluster with placement groups: a blob's stores follow from its id ` +
        '(gateways write to and read from them directly; see docs/design/metadata-at-scale.md)',
      true,
    );
  }

  /**
   * Throws unless `method` (a per-blob call) may be answered from this instance's
   * state: WrongModeError once the placement groups exist; PlacementPendingError
   * (UNAVAILABLE) while this directory is configured for them (PLACEMENT_GROUPS > 0)
   * but its state holds neither them nor a per-blob record, as at a new cluster's
   * birth: before the leader created them, or on a follower that has not applied
   * them yet. That state looks like an empty cluster of per-blob records and would
   * answer NOT_FOUND or an empty page.
   */
  requirePerBlob(method: string): void {
    if (this.enabled) throw PlacementHandlers.perBlobRefused(method);
    const { cfg, state, id } = this.node;
    if (cfg.placementGroups === 0 || state.blobs.size > 0) return;
    if (this.node.role === 'leader') {
      throw new PlacementPendingError(
        `${method}: the placement groups of this new cluster are not created yet (directory ${id} leads and creates them once the stores have settled, about 3 s after they register): retry`,
      );
    }
    const leader = this.node.leader();
    throw new PlacementPendingError(
      `${method}: directory ${id} has not yet applied the placement groups (applied index ${state.appliedIndex}): ` +
        (leader
          ? `retry, or ask the leader ${leader.id} at ${leader.address}`
          : 'retry (no leader is known here)'),
    );
  }

  async updatePlacement(req: UpdatePlacementRequest): Promise<UpdatePlacementResponse> {
    const p = this.node.state.placement;
    if (!p.enabled) throw new WrongModeError('this cluster has no placement groups', false);
    if (req.group >= p.groupCount) {
      throw new ConnectError(`group ${req.group} is outside 0..${p.groupCount - 1}`, Code.InvalidArgument);
    }
    const registered = new Set(this.node.state.stores.keys());
    const problem =
      checkMembers(req.members, registered) ??
      (req.ecMembers.length > 0 ? checkEcMembers(req.ecMembers, registered) : undefined);
    if (problem) throw new ConnectError(problem, Code.InvalidArgument);
    const current = p.groups[req.group];
    if (!current || current.epoch !== req.expectedEpoch) {
      throw new VersionMismatchError(
        `group ${req.group} is at epoch ${current?.epoch ?? 0n}, not the expected ${req.expectedEpoch}: re-read it`,
      );
    }
    const ecCount = req.ecMembers.length || current.ecMembers.length;
    if (req.ecDataShards > 0 && req.ecDataShards >= ecCount) {
      throw new ConnectError(
        `ec_data_shards ${req.ecDataShards} leaves no parity among ${ecCount} EC members: k must be below k + m`,
        Code.InvalidArgument,
      );
    }
    // Members change; the group's cold-tier ec_members (and k) are kept unless the call names new ones.
    const next = withEcMembers(withMembers(current, req.members), req.ecMembers);
    if (req.ecDataShards > 0 && next.ecDataShards !== req.ecDataShards) {
      next.ecDataShards = req.ecDataShards; // withMembers made `next` a copy
    }
    const index = await this.node.propose({
      case: 'placementChanged',
      value: { groupCount: 0, groups: [next] },
    });
    return create(UpdatePlacementResponseSchema, {
      commitIndex: index,
      group: p.groups[req.group] ?? create(PlacementGroupSchema, { group: req.group }),
    });
  }

  /** UpdateReplicas on a placement cluster: the blob's extra replicas and raised target. */
  async updateExtras(req: UpdateReplicasRequest): Promise<UpdateReplicasResponse> {
    const p = this.node.state.placement;
    const group = p.groupFor(req.blobId);
    const members = new Set(group?.members.map((m) => m.storeId));
    for (const r of req.add) {
      if (members.has(r.storeId)) {
        throw new ConnectError(
          `store ${r.storeId} is a member of the blob's placement group ${group?.group}: it holds the blob already`,
          Code.InvalidArgument,
        );
      }
    }
    const index = await this.node.propose({
      case: 'extraReplicasChanged',
      value: {
        blobId: req.blobId,
        added: req.add,
        removedStoreIds: req.removeStoreIds,
        targetReplicaCount: req.targetReplicaCount,
      },
    });
    const rec = p.extras.get(req.blobId);
    const replicas = [
      ...(group?.members.map((m) => ({ storeId: m.storeId, volumeId: 0 })) ?? []),
      ...(rec?.replicas ?? []),
    ];
    return create(UpdateReplicasResponseSchema, {
      commitIndex: index,
      blob: create(BlobMetaSchema, {
        blobId: req.blobId,
        replicas,
        targetReplicaCount: rec?.targetReplicaCount || replicas.length,
        state: BlobState.ACTIVE,
        version: index,
      }),
    });
  }

  /**
   * Delete on a placement cluster: drops the blob's extra replicas from the
   * directory and names them, so the gateway tombstones them with the group's
   * members. `found` says whether there were any (the stores know the rest).
   */
  async deleteExtras(blobId: string): Promise<DirectoryServiceDeleteResponse> {
    const rec = this.node.state.placement.extras.get(blobId);
    if (!rec) {
      return create(DirectoryServiceDeleteResponseSchema, {
        commitIndex: this.node.commitIndex,
        found: false,
      });
    }
    const index = await this.node.propose({ case: 'extraReplicasChanged', value: { blobId, clear: true } });
    const extraReplicas = rec.replicas.flatMap((r) => {
      const s = this.node.state.stores.get(r.storeId);
      return s
        ? [
            {
              storeId: r.storeId,
              address: s.address,
              volumeId: r.volumeId,
              health: this.stores.currentHealth(r.storeId),
              zone: s.zone,
            },
          ]
        : [];
    });
    return create(DirectoryServiceDeleteResponseSchema, { commitIndex: index, found: true, extraReplicas });
  }
}

/**
 * Blobs in a placement cluster, estimated as the live needles on every store
 * (from their heartbeats) over the replicas per group: exact while every group
 * is at its size and no blob has extra replicas, a little high otherwise.
 */
export function estimateBlobCount(stores: readonly StoreRecord[], replicas: number): number {
  let needles = 0n;
  for (const s of stores) for (const v of s.volumes) needles += v.needleCount;
  return Math.round(Number(needles) / Math.max(1, replicas));
}

/** The replica-count histogram: hot blobs at their counts, every other blob at the group size. */
export function placementHistogram(
  extras: Map<number, number>,
  blobs: number,
  replicas: number,
): Map<number, number> {
  const h = new Map(extras);
  let hot = 0;
  for (const n of extras.values()) hot += n;
  const plain = Math.max(0, blobs - hot);
  if (plain > 0) h.set(replicas, (h.get(replicas) ?? 0) + plain);
  return h;
}
