import type { MessageInitShape } from '@bufbuild/protobuf';
import type {
  GetClusterStatusResponse,
  UpdatePlacementRequestSchema,
  UpdatePlacementResponse,
  UpdateReplicasRequestSchema,
  UpdateReplicasResponse,
  VerifyBlobsResponse,
  WatchMetadataResponse,
} from '../../gen/haystack/v1/directory_pb.js';
import { DirectoryClient } from '../directory/client.js';

/** What the manager needs from the directory cluster (a fake implements it in unit tests). */
export interface DirectoryCalls {
  updateReplicas(req: MessageInitShape<typeof UpdateReplicasRequestSchema>): Promise<UpdateReplicasResponse>;
  /** Placement mode: replaces a group's members; FAILED_PRECONDITION when its epoch moved on. */
  updatePlacement(
    req: MessageInitShape<typeof UpdatePlacementRequestSchema>,
  ): Promise<UpdatePlacementResponse>;
  verifyBlobs(storeId: string, blobIds: string[]): Promise<VerifyBlobsResponse>;
  clusterStatus(): Promise<GetClusterStatusResponse>;
  /**
   * Committed metadata changes from `fromIndex` (0: a snapshot first). The stream
   * may reconnect to other instances on its own; it ends on a fatal error or abort.
   */
  watch(
    fromIndex: bigint,
    watcherId: string,
    signal: AbortSignal,
  ): { address: string; stream: AsyncIterable<WatchMetadataResponse> };
  /** Prefer another instance next time (after a stream failed). */
  rotate(): void;
}

/**
 * DirectoryCalls over the directory cluster's DirectoryClient: writes
 * (UpdateReplicas) go to the leader it learns from hints, reads fail over, and
 * WatchMetadata resumes on another instance after the last entry seen.
 */
export class DirectoryApi implements DirectoryCalls {
  private readonly client: DirectoryClient;

  constructor(private readonly addresses: string[]) {
    if (addresses.length === 0) throw new Error('DIRECTORY_ADDRS is empty');
    this.client = new DirectoryClient({ addresses, deadlineMs: 15_000, attemptTimeoutMs: 5_000 });
  }

  updateReplicas(req: MessageInitShape<typeof UpdateReplicasRequestSchema>): Promise<UpdateReplicasResponse> {
    return this.client.updateReplicas(req);
  }

  updatePlacement(
    req: MessageInitShape<typeof UpdatePlacementRequestSchema>,
  ): Promise<UpdatePlacementResponse> {
    return this.client.updatePlacement(req);
  }

  verifyBlobs(storeId: string, blobIds: string[]): Promise<VerifyBlobsResponse> {
    return this.client.verifyBlobs(storeId, blobIds);
  }

  clusterStatus(): Promise<GetClusterStatusResponse> {
    return this.client.getClusterStatus();
  }

  watch(fromIndex: bigint, watcherId: string, signal: AbortSignal) {
    return {
      address: this.addresses.join(','),
      stream: this.client.watchMetadata({ fromIndex, watcherId }, signal),
    };
  }

  rotate(): void {}
}
