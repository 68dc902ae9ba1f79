import type { MessageInitShape } from '@bufbuild/protobuf';
import { type CallOptions, type Client, Code, ConnectError } from '@connectrpc/connect';
import {
  type AllocateWriteRequestSchema,
  type AllocateWriteResponse,
  type CommitWriteRequestSchema,
  type CommitWriteResponse,
  DirectoryService,
  type DirectoryServiceDeleteResponse,
  type DirectoryServiceListRequestSchema,
  type DirectoryServiceListResponse,
  type GetClusterStatusResponse,
  type LocateRequestSchema,
  type LocateResponse,
} from '../../gen/haystack/v1/directory_pb.js';
import type { ClientPool } from '../rpc/clients.js';

/** The DirectoryService calls a gateway makes. */
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

export interface FailoverOptions {
  /** Deadline of one call to one instance. */
  timeoutMs: number;
  /** How long to keep going round the instances while none answers. */
  retryMs: number;
}

/** Errors after which another instance (or a later try) may answer. */
function retryable(err: ConnectError, idempotent: boolean): boolean {
  if (err.code === Code.Unavailable) return true;
  // A call that timed out may have happened; only reads are repeated.
  return idempotent && (err.code === Code.DeadlineExceeded || err.code === Code.Canceled);
}

/**
 * DirectoryService across its instances: calls go to the instance that answered
 * last; on UNAVAILABLE (down, or in the middle of an election) the next one is
 * tried, round after round with backoff, for up to `retryMs`. Followers answer
 * reads themselves and forward writes to the leader, so any instance will do.
 */
export class FailoverDirectoryClient implements DirectoryApi {
  private preferred = 0;
  private readonly clients: Array<Client<typeof DirectoryService>>;

  constructor(
    private readonly addresses: string[],
    pool: ClientPool,
    private readonly opts: FailoverOptions,
  ) {
    if (addresses.length === 0) throw new Error('no directory addresses (DIRECTORY_ADDRS)');
    this.clients = addresses.map((a) => pool.client(DirectoryService, a));
  }

  private async call<T>(
    idempotent: boolean,
    fn: (c: Client<typeof DirectoryService>, o: CallOptions) => Promise<T>,
  ): Promise<T> {
    const deadline = Date.now() + this.opts.retryMs;
    let lastErr: ConnectError | undefined;
    for (let round = 0; ; round++) {
      for (let i = 0; i < this.clients.length; i++) {
        const idx = (this.preferred + i) % this.clients.length;
        try {
          const res = await fn(this.clients[idx]!, { timeoutMs: this.opts.timeoutMs });
          this.preferred = idx;
          return res;
        } catch (e) {
          const err = ConnectError.from(e);
          if (!retryable(err, idempotent)) throw err;
          lastErr = err;
        }
      }
      if (Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, Math.min(100 * 2 ** round, 1_000)));
    }
    throw new ConnectError(
      `no directory instance answered (${this.addresses.join(', ')}): ${lastErr?.rawMessage ?? 'unknown'}`,
      Code.Unavailable,
    );
  }

  allocateWrite(req: MessageInitShape<typeof AllocateWriteRequestSchema>) {
    return this.call(false, (c, o) => c.allocateWrite(req, o));
  }
  commitWrite(req: MessageInitShape<typeof CommitWriteRequestSchema>) {
    // Committing the same blob and cookie twice records it once.
    return this.call(true, (c, o) => c.commitWrite(req, o));
  }
  locate(req: MessageInitShape<typeof LocateRequestSchema>) {
    return this.call(true, (c, o) => c.locate(req, o));
  }
  delete(req: { blobId: string }) {
    return this.call(true, (c, o) => c.delete(req, o));
  }
  list(req: MessageInitShape<typeof DirectoryServiceListRequestSchema>) {
    return this.call(true, (c, o) => c.list(req, o));
  }
  getClusterStatus(req: { localOnly?: boolean }) {
    return this.call(true, (c, o) => c.getClusterStatus(req, o));
  }
}
