import type { MessageInitShape } from '@bufbuild/protobuf';
import { type Client, Code, ConnectError, createClient } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import {
  DirectoryService,
  type GetClusterStatusResponse,
  type UpdateReplicasRequestSchema,
  type UpdateReplicasResponse,
  type VerifyBlobsResponse,
  type WatchMetadataResponse,
} from '../../gen/haystack/v1/directory_pb.js';

/** Error metadata a directory sets to name the leader (see internal/directory/peers.ts). */
const LEADER_ADDRESS_HEADER = 'haystack-leader-address';

/** Codes after which another directory instance may well answer. */
const FAILOVER = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Unknown, Code.Aborted]);

/** What the manager needs from the directory cluster (a fake implements it in unit tests). */
export interface DirectoryCalls {
  updateReplicas(req: MessageInitShape<typeof UpdateReplicasRequestSchema>): Promise<UpdateReplicasResponse>;
  verifyBlobs(storeId: string, blobIds: string[]): Promise<VerifyBlobsResponse>;
  clusterStatus(): Promise<GetClusterStatusResponse>;
  watch(
    fromIndex: bigint,
    watcherId: string,
    signal: AbortSignal,
  ): { address: string; stream: AsyncIterable<WatchMetadataResponse> };
  rotate(): void;
}

/**
 * The calls the replication manager makes to the directory cluster, over every
 * instance: a call that fails with a transport-ish code is retried on the next
 * instance (a follower forwards writes to the leader; an error naming the leader
 * is followed). WatchMetadata goes to one instance at a time, rotating on
 * reconnect.
 */
export class DirectoryApi implements DirectoryCalls {
  private readonly clients = new Map<string, Client<typeof DirectoryService>>();
  private preferred = 0;

  constructor(
    private readonly addresses: string[],
    private readonly callTimeoutMs = 10_000,
  ) {
    if (addresses.length === 0) throw new Error('DIRECTORY_ADDRS is empty');
  }

  private client(address: string): Client<typeof DirectoryService> {
    let c = this.clients.get(address);
    if (!c) {
      c = createClient(
        DirectoryService,
        createGrpcTransport({
          baseUrl: `http://${address}`,
          // Notice a dead instance on an idle WatchMetadata stream too.
          pingIntervalMs: 1000,
          pingTimeoutMs: 1000,
          pingIdleConnection: true,
          idleConnectionTimeoutMs: 60_000,
        }),
      );
      this.clients.set(address, c);
    }
    return c;
  }

  private order(): string[] {
    const n = this.addresses.length;
    return Array.from({ length: n }, (_, i) => this.addresses[(this.preferred + i) % n] as string);
  }

  /** Runs a unary call on the preferred instance, failing over to the others. */
  async call<T>(fn: (c: Client<typeof DirectoryService>, timeoutMs: number) => Promise<T>): Promise<T> {
    let last: unknown;
    const tried = new Set<string>();
    const queue = this.order();
    while (queue.length > 0) {
      const address = queue.shift() as string;
      if (tried.has(address)) continue;
      tried.add(address);
      try {
        const res = await fn(this.client(address), this.callTimeoutMs);
        this.preferred = Math.max(0, this.addresses.indexOf(address));
        return res;
      } catch (err) {
        last = err;
        const ce = ConnectError.from(err);
        const hint = ce.metadata.get(LEADER_ADDRESS_HEADER);
        if (hint && !tried.has(hint)) queue.unshift(hint);
        else if (!FAILOVER.has(ce.code) && ce.code !== Code.FailedPrecondition) throw err;
        else if (ce.code === Code.FailedPrecondition && !/leader/i.test(ce.rawMessage)) throw err;
      }
    }
    throw last;
  }

  updateReplicas(req: MessageInitShape<typeof UpdateReplicasRequestSchema>): Promise<UpdateReplicasResponse> {
    return this.call((c, timeoutMs) => c.updateReplicas(req, { timeoutMs }));
  }

  verifyBlobs(storeId: string, blobIds: string[]): Promise<VerifyBlobsResponse> {
    return this.call((c, timeoutMs) => c.verifyBlobs({ storeId, blobIds }, { timeoutMs }));
  }

  clusterStatus(): Promise<GetClusterStatusResponse> {
    return this.call((c, timeoutMs) => c.getClusterStatus({ localOnly: true }, { timeoutMs }));
  }

  /** Opens WatchMetadata on the next instance in turn; returns its address and the stream. */
  watch(
    fromIndex: bigint,
    watcherId: string,
    signal: AbortSignal,
  ): { address: string; stream: AsyncIterable<WatchMetadataResponse> } {
    const address = this.addresses[this.preferred % this.addresses.length] as string;
    return {
      address,
      stream: this.client(address).watchMetadata(
        { fromIndex, watcherId, includeUncommitted: false },
        { signal },
      ),
    };
  }

  /** Moves the watch (and calls) on to the next instance. */
  rotate(): void {
    this.preferred = (this.preferred + 1) % this.addresses.length;
  }
}
