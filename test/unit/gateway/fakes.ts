import { createHash } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { pino } from 'pino';
import { type BlobMeta, BlobMetaSchema, BlobState, StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import {
  AllocateWriteResponseSchema,
  CommitWriteResponseSchema,
  DirectoryRole,
  DirectoryServiceDeleteResponseSchema,
  DirectoryServiceListResponseSchema,
  GetClusterStatusResponseSchema,
  LocateResponseSchema,
  type WatchMetadataResponse,
  WatchMetadataResponseSchema,
} from '../../../gen/haystack/v1/directory_pb.js';
import { LogEntrySchema } from '../../../gen/haystack/v1/metadata_pb.js';
import {
  ReadResponseSchema,
  type WriteRequest,
  type WriteResponse,
  WriteResponseSchema,
} from '../../../gen/haystack/v1/store_pb.js';
import type { StoreApi } from '../../../internal/gateway/blobs.js';
import type { DirectoryApi } from '../../../internal/gateway/directory.js';
import { PlacementView } from '../../../internal/gateway/placement-view.js';
import { FENCED_TERM_HEADER } from '../../../internal/rpc/errors.js';

export type Mode = { kind: 'ok' } | { kind: 'down' } | { kind: 'stall' } | { kind: 'cut'; after: number };

/** An in-memory store with failure modes. */
export class FakeStore {
  readonly blobs = new Map<string, { cookie: bigint; data: Buffer }>();
  mode: Mode = { kind: 'ok' };
  /** 'deposed': refuse the write's directory term as a store that has seen term 99 does. */
  writeMode: 'ok' | 'fail' | 'deposed' = 'ok';
  reads = 0;
  /** Write streams fully received (their answer may still be held). */
  writesReceived = 0;
  /** Set: a write's answer (its ack) waits for it, after the whole stream was received. */
  hold: Promise<void> | undefined;
  /** The cookie of every Read asked of this store (0: none sent). */
  readonly readCookies: bigint[] = [];
  chunkSize = 1000;

  constructor(
    readonly storeId: string,
    private readonly peers: Map<string, FakeStore>,
  ) {}

  api(): StoreApi {
    const self = this;
    return {
      async write(input: AsyncIterable<unknown>): Promise<WriteResponse> {
        const reqs = input as AsyncIterable<WriteRequest>;
        let header: Extract<WriteRequest['msg'], { case: 'header' }>['value'] | undefined;
        const parts: Uint8Array[] = [];
        for await (const r of reqs) {
          if (r.msg.case === 'header') header = r.msg.value;
          else if (r.msg.case === 'chunk') parts.push(r.msg.value);
        }
        self.writesReceived++;
        await self.hold;
        if (self.writeMode === 'fail') throw new ConnectError(`${self.storeId} is broken`, Code.Unavailable);
        if (self.writeMode === 'deposed') {
          throw new ConnectError(
            `directory term ${header?.term ?? 0n} is older than term 99 already seen: the sender was deposed`,
            Code.FailedPrecondition,
            { [FENCED_TERM_HEADER]: '99' },
          );
        }
        if (!header) throw new ConnectError('no header', Code.InvalidArgument);
        const data = Buffer.concat(parts);
        if (BigInt(data.length) !== header.size) throw new ConnectError('short', Code.InvalidArgument);
        const sha = createHash('sha256').update(data).digest();
        if (header.sha256.length > 0 && !sha.equals(Buffer.from(header.sha256))) {
          throw new ConnectError('sha mismatch', Code.InvalidArgument);
        }
        const all = [self, ...header.forwardTo.map((t) => self.peers.get(t.storeId)!)];
        for (const s of all) s.blobs.set(header.blobId, { cookie: header.cookie, data });
        return create(WriteResponseSchema, {
          blobId: header.blobId,
          size: header.size,
          sha256: sha,
          replicas: all.map((s) => ({ storeId: s.storeId, volumeId: 1, offset: 0n })),
        });
      },
      read(req, opts) {
        self.reads++;
        self.readCookies.push(req.cookie ?? 0n);
        const mode = self.mode;
        const blob = self.blobs.get(req.blobId ?? '');
        return (async function* () {
          if (mode.kind === 'down') throw new ConnectError(`${self.storeId} unreachable`, Code.Unavailable);
          if (!blob || (req.cookie && req.cookie !== blob.cookie))
            throw new ConnectError('no such needle', Code.NotFound);
          const offset = Number(req.offset ?? 0n);
          const length = Number(req.length ?? 0n) || blob.data.length - offset;
          yield create(ReadResponseSchema, {
            msg: {
              case: 'header',
              value: { size: BigInt(blob.data.length), offset: BigInt(offset), length: BigInt(length) },
            },
          });
          let sent = 0;
          for (let i = offset; i < offset + length; i += self.chunkSize) {
            if (mode.kind === 'stall') {
              await new Promise<void>((_, reject) =>
                opts?.signal?.addEventListener('abort', () =>
                  reject(new ConnectError('aborted', Code.Canceled)),
                ),
              );
            }
            if (mode.kind === 'cut' && sent >= mode.after)
              throw new ConnectError('connection reset', Code.Unavailable);
            const c = blob.data.subarray(i, Math.min(offset + length, i + self.chunkSize));
            sent += c.length;
            yield create(ReadResponseSchema, { msg: { case: 'chunk', value: c } });
          }
        })();
      },
    };
  }
}

/** An in-memory directory over FakeStores. */
export class FakeDirectory implements DirectoryApi {
  readonly blobs = new Map<string, BlobMeta>();
  readonly allocated = new Map<string, bigint>();
  index = 0n;
  commits = 0;
  /** min_index of every Locate. */
  readonly minIndexes: bigint[] = [];
  /** Offer no replica in Locate answers (a leader that has heard no heartbeat yet). */
  hideReplicas = false;
  /** Set: GetClusterStatus names a reachable leader at this commit index (leaderCommitIndex). */
  leaderCommit: bigint | undefined;

  constructor(
    readonly stores: FakeStore[],
    private readonly replicas = 3,
  ) {}

  async allocateWrite(req: { blobId?: string; size?: bigint; replicaCount?: number }) {
    const id = req.blobId ?? '';
    if (this.blobs.has(id)) throw new ConnectError(`blob ${id} already exists`, Code.AlreadyExists);
    const cookie = BigInt(this.allocated.size + 1) * 0x1000_0000_1n;
    this.allocated.set(id, cookie);
    const n = req.replicaCount || this.replicas;
    return create(AllocateWriteResponseSchema, {
      blobId: id,
      cookie,
      term: 7n,
      stores: this.stores.slice(0, n).map((s) => ({ storeId: s.storeId, address: s.storeId })),
    });
  }

  async commitWrite(req: Parameters<DirectoryApi['commitWrite']>[0]) {
    this.commits++;
    this.index++;
    const blob = create(BlobMetaSchema, {
      blobId: req.blobId ?? '',
      cookie: req.cookie ?? 0n,
      size: req.size ?? 0n,
      sha256: req.sha256 ?? new Uint8Array(),
      contentType: req.contentType ?? '',
      replicas: (req.replicas ?? []).map((r) => ({ storeId: r.storeId ?? '', volumeId: r.volumeId ?? 0 })),
      targetReplicaCount: req.replicas?.length ?? 0,
      createdAtMs: 1_700_000_000_000n,
      state: BlobState.ACTIVE,
      version: this.index,
    });
    this.blobs.set(blob.blobId, blob);
    return create(CommitWriteResponseSchema, { commitIndex: this.index, blob });
  }

  async locate(req: { blobIds?: string[]; minIndex?: bigint }) {
    this.minIndexes.push(req.minIndex ?? 0n);
    return create(LocateResponseSchema, {
      appliedIndex: this.index,
      locations: (req.blobIds ?? []).map((id) => {
        const blob = this.blobs.get(id);
        if (!blob) return { blobId: id, found: false };
        return {
          blobId: id,
          found: true,
          blob,
          replicas: (this.hideReplicas ? [] : blob.replicas).map((r) => ({
            storeId: r.storeId,
            address: r.storeId,
            volumeId: r.volumeId,
            health: StoreHealth.HEALTHY,
          })),
        };
      }),
    });
  }

  async delete(req: { blobId: string }) {
    const found = this.blobs.delete(req.blobId);
    this.index++;
    return create(DirectoryServiceDeleteResponseSchema, { found, commitIndex: this.index });
  }

  async list(req: { pageSize?: number; pageToken?: string; prefix?: string }) {
    const ids = [...this.blobs.keys()]
      .filter((id) => id.startsWith(req.prefix ?? '') && id > (req.pageToken ?? ''))
      .sort();
    const page = ids.slice(0, req.pageSize || 100);
    return create(DirectoryServiceListResponseSchema, {
      blobs: page.map((id) => this.blobs.get(id)!),
      nextPageToken: page.length < ids.length ? (page[page.length - 1] ?? '') : '',
    });
  }

  async updateReplicas(): Promise<never> {
    throw new ConnectError('UpdateReplicas is not used by the per-blob path', Code.Unimplemented);
  }

  async getClusterStatus() {
    return create(GetClusterStatusResponseSchema, {
      directories:
        this.leaderCommit === undefined
          ? []
          : [
              {
                directoryId: 'd0',
                reachable: true,
                role: DirectoryRole.LEADER,
                commitIndex: this.leaderCommit,
              },
            ],
      stores: this.stores.map((s) => ({
        storeId: s.storeId,
        address: s.storeId,
        health: StoreHealth.HEALTHY,
      })),
    });
  }
}

export function fakeCluster(n = 3) {
  const peers = new Map<string, FakeStore>();
  const stores = Array.from({ length: n }, (_, i) => new FakeStore(`store-${i}`, peers));
  for (const s of stores) peers.set(s.storeId, s);
  const directory = new FakeDirectory(stores);
  return { stores, directory, storeApi: (addr: string) => peers.get(addr)!.api() };
}

/** A WatchMetadata push of one LeaderChanged entry: a view applying it is at leader `term`. */
export function leaderEntry(index: bigint, term: bigint, leaderId: string): WatchMetadataResponse {
  const entry = create(LogEntrySchema, {
    index,
    term,
    change: { case: 'leaderChanged', value: { leaderId } },
  });
  return create(WatchMetadataResponseSchema, { msg: { case: 'entries', value: { entries: [entry] } } });
}

/**
 * A PlacementView fed by a queue: `deliver` hands it the next push (the view applies
 * pushes in order, as from WatchMetadata); nothing arrives until delivered.
 */
export function queuedView(first: WatchMetadataResponse[]): {
  view: PlacementView;
  deliver: (m: WatchMetadataResponse) => void;
} {
  const s = pushedStream(first);
  const view = new PlacementView(
    (_req, signal) => s.stream(signal),
    'gw-test',
    pino({ level: 'silent' }),
    10,
  );
  return { view, deliver: s.push };
}

/**
 * A WatchMetadata stream fed by `push`: yields what was pushed, in order, stays open and
 * silent until then, and ends when the call's signal aborts. Each `stream()` call reads
 * the same queue (a reopened stream goes on where the last one stopped).
 */
export function pushedStream(first: WatchMetadataResponse[] = []): {
  push: (m: WatchMetadataResponse) => void;
  stream: (signal: AbortSignal | undefined) => AsyncGenerator<WatchMetadataResponse>;
} {
  const queue = [...first];
  let wake = () => {};
  return {
    push: (m) => {
      queue.push(m);
      wake();
    },
    async *stream(signal) {
      while (!signal?.aborted) {
        const next = queue.shift();
        if (next) yield next;
        else
          await new Promise<void>((r) => {
            wake = r;
            signal?.addEventListener('abort', () => r(), { once: true });
          });
      }
    },
  };
}
