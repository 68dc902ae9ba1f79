import type { MessageInitShape } from '@bufbuild/protobuf';
import type {
  AllocateWriteRequestSchema,
  AllocateWriteResponse,
  CommitWriteRequestSchema,
  CommitWriteResponse,
  DirectoryServiceDeleteResponse,
  DirectoryServiceListRequestSchema,
  DirectoryServiceListResponse,
  GetClusterStatusResponse,
  LocateRequestSchema,
  LocateResponse,
  UpdateReplicasRequestSchema,
  UpdateReplicasResponse,
} from '../../gen/haystack/v1/directory_pb.js';
import { DirectoryRole } from '../../gen/haystack/v1/directory_pb.js';
import type { DirectoryClient } from '../directory/client.js';

/** The DirectoryService calls a gateway makes (the seam its unit tests fake). */
export interface DirectoryApi {
  allocateWrite(req: MessageInitShape<typeof AllocateWriteRequestSchema>): Promise<AllocateWriteResponse>;
  commitWrite(req: MessageInitShape<typeof CommitWriteRequestSchema>): Promise<CommitWriteResponse>;
  locate(req: MessageInitShape<typeof LocateRequestSchema>): Promise<LocateResponse>;
  /** `perBlob`: see DirectoryServiceDeleteRequest.per_blob. */
  delete(req: { blobId: string; perBlob?: boolean }): Promise<DirectoryServiceDeleteResponse>;
  list(
    req: MessageInitShape<typeof DirectoryServiceListRequestSchema>,
  ): Promise<DirectoryServiceListResponse>;
  getClusterStatus(req: { localOnly?: boolean }): Promise<GetClusterStatusResponse>;
  /** Placement groups: raises a blob's replica target (the manager adds extra replicas). */
  updateReplicas(req: MessageInitShape<typeof UpdateReplicasRequestSchema>): Promise<UpdateReplicasResponse>;
}

/**
 * DirectoryApi on the directory cluster's own client: reads go to any instance
 * (failing over), writes to the leader it learns; UNAVAILABLE, and streams a dying
 * instance reset (CANCELED), are retried with backoff until the call's deadline.
 */
export function directoryApi(client: DirectoryClient): DirectoryApi {
  return {
    allocateWrite: (req) => client.allocateWrite(req),
    commitWrite: (req) => client.commitWrite(req),
    locate: (req) => client.locate(req.blobIds ?? [], req.minIndex ?? 0n),
    delete: (req) => client.delete(req.blobId, undefined, req.perBlob ?? false),
    list: (req) => client.list(req),
    getClusterStatus: () => client.getClusterStatus(),
    updateReplicas: (req) => client.updateReplicas(req),
  };
}

/**
 * The directory leader's commit index: at or above every change acknowledged so far (a
 * leader reports LEADER only once its term's first entry, after all earlier ones, is
 * committed). The highest any reachable instance knows; rejects when no leader answers.
 */
export async function leaderCommitIndex(directory: DirectoryApi): Promise<bigint> {
  const s = await directory.getClusterStatus({});
  if (!s.directories.some((d) => d.reachable && d.role === DirectoryRole.LEADER))
    throw new Error('no directory leader is reachable');
  let index = 0n;
  for (const d of s.directories) if (d.reachable && d.commitIndex > index) index = d.commitIndex;
  return index;
}
