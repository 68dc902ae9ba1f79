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
  LocateResponse,
  UpdatePlacementRequestSchema,
  UpdatePlacementResponse,
  UpdateReplicasRequestSchema,
  UpdateReplicasResponse,
  VerifyBlobsResponse,
  WatchMetadataResponse,
} from '../../gen/haystack/v1/directory_pb.js';
import { sleep } from '../common/sleep.js';
import { StallWatch } from '../rpc/stall-watch.js';
import type { TransportSecurity } from '../security/tls-config.js';
import { type DirectoryClientStub, LEADER_ADDRESS_HEADER, leaderHintOf, PeerClients } from './peers.js';
import { DEFAULT_WATCH_STALL_MS, firstMessageStallMs } from './watch-liveness.js';

export interface DirectoryClientOptions {
  /** Directory instances (host:port). */
  addresses: string[];
  /** Longest a call (with its retries) may take; default 15 s. */
  deadlineMs?: number;
  /** Longest a single attempt may take; default 5 s. */
  attemptTimeoutMs?: number;
  /** First retry delay (doubles up to maxBackoffMs, with jitter); default 50 ms. */
  backoffMs?: number;
  /** Longest retry delay; default 200 ms (a failover takes about LEADER_TIMEOUT). */
  maxBackoffMs?: number;
  /** Whose certificate to show (default: this process's own, see rpc/transport.ts). */
  security?: TransportSecurity;
  /** A metadata watch silent this long is dropped and opened again (default 15 s; watch-liveness.ts). */
  watchStallMs?: number;
}

export interface CallOptions {
  deadlineMs?: number;
  signal?: AbortSignal;
}

/**
 * Worth retrying: UNAVAILABLE (no leader, forwarding failed, too few stores right
 * now), an attempt's own timeout, a stream the peer reset (CANCELED while our own
 * signal is not aborted), and a follower's FAILED_PRECONDITION that names
 * the leader. Any other FAILED_PRECONDITION (a version check) is final.
 */
function retriable(ce: ConnectError): boolean {
  if (ce.code === Code.Unavailable || ce.code === Code.DeadlineExceeded || ce.code === Code.Aborted)
    return true;
  // An instance that dies mid-call resets its HTTP/2 streams (RST_STREAM CANCEL);
  // callers check their own signal before retrying, so this is the peer's doing.
  if (ce.code === Code.Canceled) return true;
  return ce.code === Code.FailedPrecondition && leaderHintOf(ce) !== null;
}

/**
 * A client of the directory cluster for other processes (gateway, replication
 * manager, CLI). Reads go to any reachable instance (the last one that worked
 * first, failing over to the others); writes go to the leader, learnt from the
 * hints directories give (error metadata, response header) and from
 * GetClusterStatus. UNAVAILABLE (and a follower's FAILED_PRECONDITION naming the
 * leader) is retried with exponential backoff until the deadline. Writes are
 * safe to retry: CommitWrite is idempotent, Delete reports found=false the
 * second time, UpdateReplicas can pin expected_version.
 */
export class DirectoryClient {
  private readonly clients: PeerClients;
  private leader: string | null = null;
  private readInstance = 0;
  /** The instance a metadata watch last streamed from (null before any). */
  private watchAddress: string | null = null;
  private readonly deadlineMs: number;
  private readonly attemptMs: number;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;

  constructor(private readonly opts: DirectoryClientOptions) {
    if (opts.addresses.length === 0) throw new Error('DirectoryClient needs at least one directory address');
    this.clients = new PeerClients(opts.security);
    this.deadlineMs = opts.deadlineMs ?? 15_000;
    this.attemptMs = opts.attemptTimeoutMs ?? 5_000;
    this.backoffMs = opts.backoffMs ?? 50;
    this.maxBackoffMs = opts.maxBackoffMs ?? 200;
  }

  /** The leader address as last learnt (null when unknown). */
  get knownLeader(): string | null {
    return this.leader;
  }

  allocateWrite(
    req: MessageInitShape<typeof AllocateWriteRequestSchema>,
    o?: CallOptions,
  ): Promise<AllocateWriteResponse> {
    return this.write((c, opt) => c.allocateWrite(req, opt), o);
  }

  commitWrite(
    req: MessageInitShape<typeof CommitWriteRequestSchema>,
    o?: CallOptions,
  ): Promise<CommitWriteResponse> {
    return this.write((c, opt) => c.commitWrite(req, opt), o);
  }

  /** `perBlob`: the caller deletes a per-blob record (DirectoryServiceDeleteRequest.per_blob). */
  delete(blobId: string, o?: CallOptions, perBlob = false): Promise<DirectoryServiceDeleteResponse> {
    return this.write((c, opt) => c.delete({ blobId, perBlob }, opt), o);
  }

  updateReplicas(
    req: MessageInitShape<typeof UpdateReplicasRequestSchema>,
    o?: CallOptions,
  ): Promise<UpdateReplicasResponse> {
    return this.write((c, opt) => c.updateReplicas(req, opt), o);
  }

  /** Replaces one placement group's members (compare-and-set on its epoch), on the leader. */
  updatePlacement(
    req: MessageInitShape<typeof UpdatePlacementRequestSchema>,
    o?: CallOptions,
  ): Promise<UpdatePlacementResponse> {
    return this.write((c, opt) => c.updatePlacement(req, opt), o);
  }

  /** Which of these ids are referenced on the store (answered by the leader: it knows in-flight allocations). */
  verifyBlobs(storeId: string, blobIds: string[], o?: CallOptions): Promise<VerifyBlobsResponse> {
    return this.write((c, opt) => c.verifyBlobs({ storeId, blobIds }, opt), o);
  }

  /** Locates blobs; pass a commit index as minIndex to read your own write on any instance. */
  locate(blobIds: string[], minIndex = 0n, o?: CallOptions): Promise<LocateResponse> {
    return this.read((c, opt) => c.locate({ blobIds, minIndex }, opt), o);
  }

  list(
    req: MessageInitShape<typeof DirectoryServiceListRequestSchema>,
    o?: CallOptions,
  ): Promise<DirectoryServiceListResponse> {
    return this.read((c, opt) => c.list(req, opt), o);
  }

  getClusterStatus(o?: CallOptions): Promise<GetClusterStatusResponse> {
    return this.read(async (c, opt) => {
      const res = await c.getClusterStatus({}, opt);
      const leader = res.directories.find((d) => d.directoryId === res.leaderId && res.leaderId !== '');
      if (leader?.address) this.leader = leader.address;
      return res;
    }, o);
  }

  /**
   * Follows committed metadata changes from `fromIndex` (0: a snapshot first),
   * reconnecting to another instance on failure and resuming after the last entry seen;
   * `nextSource` starts on another instance than the one the watch last streamed
   * from (it was behind) — not merely another than reads use now: a failed read may
   * already have moved reads off it, and moving once more would land back on it.
   */
  async *watchMetadata(
    req: { fromIndex?: bigint; watcherId?: string; nextSource?: boolean },
    signal?: AbortSignal,
  ): AsyncGenerator<WatchMetadataResponse> {
    let from = req.fromIndex ?? 0n;
    let backoff = this.backoffMs;
    // The caller found the directory it followed behind (a store has seen a newer term).
    if (req.nextSource && this.watchAddress !== null) this.failRead(this.watchAddress);
    while (!signal?.aborted) {
      const address = this.pickRead();
      this.watchAddress = address;
      // Directories write at least a keepalive a second: long silence means a stuck stream.
      const stallMs = this.opts.watchStallMs ?? DEFAULT_WATCH_STALL_MS;
      const stall = new StallWatch(
        stallMs,
        signal ?? new AbortController().signal,
        firstMessageStallMs(stallMs),
      );
      try {
        for await (const msg of this.clients
          .get(address)
          .watchMetadata(
            { fromIndex: from, watcherId: req.watcherId ?? '', includeUncommitted: false },
            { signal: stall.signal },
          )) {
          stall.heard();
          backoff = this.backoffMs;
          if (msg.msg.case === 'snapshot') from = msg.msg.value.index + 1n;
          else if (msg.msg.case === 'entries') {
            const last = msg.msg.value.entries.at(-1);
            if (last) from = last.index + 1n;
          }
          stall.hold(); // the caller's time with a message is not the stream's silence
          yield msg;
          stall.heard();
        }
      } catch (err) {
        if (signal?.aborted) return;
        this.failRead(address);
        if (!stall.stalled && !retriable(ConnectError.from(err))) throw err;
      } finally {
        stall.stop();
      }
      await sleep(jitter(backoff), signal);
      backoff = Math.min(backoff * 2, this.maxBackoffMs);
    }
  }

  private pickRead(): string {
    return this.opts.addresses[this.readInstance % this.opts.addresses.length] as string;
  }

  private failRead(address: string): void {
    if (this.pickRead() === address) this.readInstance++;
  }

  private async read<T>(fn: (c: DirectoryClientStub, o: object) => Promise<T>, o?: CallOptions): Promise<T> {
    const deadline = Date.now() + (o?.deadlineMs ?? this.deadlineMs);
    let backoff = this.backoffMs;
    let tried = 0;
    let last: ConnectError | null = null;
    for (;;) {
      const address = this.pickRead();
      try {
        return await fn(this.clients.get(address), this.attemptOptions(deadline, o));
      } catch (err) {
        const ce = finalError(ConnectError.from(err), last, deadline);
        last = ce;
        if (!retriable(ce) || Date.now() >= deadline || o?.signal?.aborted) throw ce;
        this.failRead(address);
        tried++;
        // Another instance right away, then back off once every instance failed.
        if (tried % this.opts.addresses.length === 0) {
          await sleep(jitter(backoff), o?.signal);
          backoff = Math.min(backoff * 2, this.maxBackoffMs);
        }
      }
    }
  }

  private async write<T>(fn: (c: DirectoryClientStub, o: object) => Promise<T>, o?: CallOptions): Promise<T> {
    const deadline = Date.now() + (o?.deadlineMs ?? this.deadlineMs);
    let backoff = this.backoffMs;
    let attempt = 0;
    let last: ConnectError | null = null;
    for (;;) {
      const address = this.leader ?? (this.opts.addresses[attempt % this.opts.addresses.length] as string);
      attempt++;
      try {
        return await fn(this.clients.get(address), {
          ...this.attemptOptions(deadline, o),
          onHeader: (h: Headers) => {
            const l = h.get(LEADER_ADDRESS_HEADER);
            if (l) this.leader = l;
          },
        });
      } catch (err) {
        const ce = finalError(ConnectError.from(err), last, deadline);
        last = ce;
        if (!retriable(ce) || Date.now() >= deadline || o?.signal?.aborted) throw ce;
        const hint = leaderHintOf(ce);
        if (hint && hint !== address) {
          this.leader = hint;
          continue; // follow the hint at once
        }
        // The instance we thought led cannot commit (or is gone): ask around next time.
        if (this.leader === address) this.leader = null;
        await sleep(Math.min(jitter(backoff), Math.max(0, deadline - Date.now() - 20)), o?.signal);
        if (Date.now() >= deadline - 20) throw ce;
        backoff = Math.min(backoff * 2, this.maxBackoffMs);
      }
    }
  }

  private attemptOptions(deadline: number, o?: CallOptions): { timeoutMs: number; signal?: AbortSignal } {
    const timeoutMs = Math.max(1, Math.min(this.attemptMs, deadline - Date.now()));
    return o?.signal ? { timeoutMs, signal: o.signal } : { timeoutMs };
  }
}

/** When the overall deadline cut an attempt short, the previous error says more. */
function finalError(ce: ConnectError, last: ConnectError | null, deadline: number): ConnectError {
  if (ce.code === Code.DeadlineExceeded && last && Date.now() >= deadline - 5) return last;
  return ce;
}

function jitter(ms: number): number {
  return ms / 2 + Math.random() * ms;
}

export { LEADER_ADDRESS_HEADER };
