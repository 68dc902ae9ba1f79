import type { MessageInitShape } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
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
} from '../../gen/haystack/v1/directory_pb.js';
import type { DirectoryClient } from '../directory/client.js';

/** The DirectoryService calls a gateway makes (the seam its unit tests fake). */
export interface DirectoryApi {
  allocateWrite(req: MessageInitShape<typeof AllocateWriteRequestSchema>): Promise<AllocateWriteResponse>;
  commitWrite(req: MessageInitShape<typeof CommitWriteRequestSchema>): Promise<CommitWriteResponse>;
  locate(req: MessageInitShape<typeof LocateRequestSchema>): Promise<LocateResponse>;
  delete(req: { blobId: string }): Promise<DirectoryServiceDeleteResponse>;
  list(
    req: MessageInitShape<typeof DirectoryServiceListRequestSchema>,
  ): Promise<DirectoryServiceListResponse>;
  getClusterStatus(req: { localOnly?: boolean }): Promise<GetClusterStatusResponse>;
}

/**
 * A directory instance that dies mid-call closes its HTTP/2 session, and the
 * streams on it end with RST_STREAM CANCEL, which arrives as CANCELED (also when a
 * follower was forwarding to a leader that died). The gateway never cancels these
 * calls itself, so CANCELED here means "the peer went away": idempotent calls are
 * tried again, and what still fails leaves as UNAVAILABLE (which clients retry).
 */
async function peerGone<T>(idempotent: boolean, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      const ce = ConnectError.from(err);
      if (ce.code !== Code.Canceled) throw ce;
      if (!idempotent || attempt >= 3) {
        throw new ConnectError(
          `directory call interrupted: ${ce.rawMessage}`,
          Code.Unavailable,
          undefined,
          undefined,
          ce,
        );
      }
      await new Promise((r) => setTimeout(r, 50 * (attempt + 1)));
    }
  }
}

/**
 * DirectoryApi on the directory cluster's own client: reads go to any instance
 * (failing over), writes to the leader it learns; UNAVAILABLE is retried with
 * backoff until the call's deadline (an election takes about LEADER_TIMEOUT).
 */
export function directoryApi(client: DirectoryClient): DirectoryApi {
  return {
    allocateWrite: (req) => peerGone(false, () => client.allocateWrite(req)),
    // CommitWrite of the same blob and cookie records it once; Delete answers found=false the second time.
    commitWrite: (req) => peerGone(true, () => client.commitWrite(req)),
    locate: (req) => peerGone(true, () => client.locate(req.blobIds ?? [], req.minIndex ?? 0n)),
    delete: (req) => peerGone(true, () => client.delete(req.blobId)),
    list: (req) => peerGone(true, () => client.list(req)),
    getClusterStatus: () => peerGone(true, () => client.getClusterStatus()),
  };
}
