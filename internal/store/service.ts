import { create } from '@bufbuild/protobuf';
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type HandlerContext,
  type ServiceImpl,
} from '@connectrpc/connect';
import { type StoreTarget, type VolumeStats, VolumeStatsSchema } from '../../gen/haystack/v1/common_pb.js';
import {
  type ReadResponse,
  ReadResponseSchema,
  StoreService,
  type WriteHeader,
  type WriteRequest,
  WriteRequestSchema,
  type WriteResponse,
  WriteResponseSchema,
  type WrittenReplica,
  WrittenReplicaSchema,
} from '../../gen/haystack/v1/store_pb.js';
import { validateBlobId } from '../common/blob-id.js';
import type { ClientPool } from '../rpc/clients.js';
import { invalidArgument, mapErrors, toConnectError } from '../rpc/errors.js';
import { AsyncPipe } from '../rpc/pipe.js';
import type { Logger } from '../server/logger.js';
import type { Store, VolumeStatsInfo } from './store.js';

/** Largest chunk a client may send in one Write message. */
const MAX_CHUNK = 4 * 1024 * 1024;

export interface StoreServiceOptions {
  storeId: string;
  store: Store;
  peers: ClientPool;
  log: Logger;
  readChunkSize: number;
  /** Counts a served read for the replication manager's heat map. */
  onRead?: (blobId: string) => void;
  /** A read found this store's copy corrupt (checksum mismatch). */
  onCorrupt?: (blobId: string) => void;
}

/** A volume's statistics as the contract's VolumeStats message. */
export function volumeStatsMessage(v: VolumeStatsInfo): VolumeStats {
  return create(VolumeStatsSchema, {
    volumeId: v.volumeId,
    sizeBytes: BigInt(v.sizeBytes),
    liveBytes: BigInt(v.liveBytes),
    needleCount: BigInt(v.needleCount),
    deletedCount: BigInt(v.deletedCount),
    efficiency: v.efficiency,
    readOnly: v.readOnly,
    compacting: v.compacting,
  });
}

function checkId(id: string): void {
  const problem = validateBlobId(id);
  if (problem) throw invalidArgument(problem);
}

/** The StoreService handlers over a Store engine. */
export class StoreServiceImpl {
  /**
   * Highest fencing terms seen, one per issuer: directory leaders (Write, Delete)
   * and replication managers (Replicate) draw terms from different counters.
   */
  private readonly terms = { directory: 0n, manager: 0n };

  constructor(private readonly o: StoreServiceOptions) {}

  register(router: ConnectRouter): void {
    router.service(StoreService, this.impl());
  }

  /** The handlers, for connect-node and the direct gRPC path alike. */
  impl(): ServiceImpl<typeof StoreService> {
    return {
      write: (reqs, ctx) => this.write(reqs, ctx),
      read: (req, ctx) => this.read(req.blobId, req.cookie, req.offset, req.length, ctx),
      delete: (req) =>
        mapErrors(async () => {
          checkId(req.blobId);
          this.checkTerm('directory', req.term);
          return { found: await this.o.store.delete(req.blobId) };
        }),
      replicate: (req, ctx) =>
        mapErrors(async () => {
          checkId(req.blobId);
          this.checkTerm('manager', req.term);
          if (!req.source?.address) throw invalidArgument('source.address is required');
          if (req.sha256.length !== 0 && req.sha256.length !== 32)
            throw invalidArgument('sha256 must be 32 bytes');
          return this.replicate(req.blobId, req.cookie, req.source, req.sha256, ctx);
        }),
      compact: (req) =>
        mapErrors(async () => {
          const done = await this.o.store.compact(req.volumeId === 0 ? undefined : req.volumeId, req.force);
          return {
            compactions: done.map((c) => ({
              volumeId: c.volumeId,
              bytesBefore: BigInt(c.bytesBefore),
              bytesAfter: BigInt(c.bytesAfter),
              needlesKept: BigInt(c.needlesKept),
              durationMs: BigInt(Math.round(c.durationMs)),
            })),
          };
        }),
      scrub: (req) =>
        mapErrors(async () => {
          const r = await this.o.store.scrub(req.volumeId === 0 ? undefined : req.volumeId);
          return {
            needlesChecked: BigInt(r.needlesChecked),
            bytesChecked: BigInt(r.bytesChecked),
            corrupt: r.corrupt.map((c) => ({
              blobId: c.blobId ?? '',
              volumeId: c.volumeId,
              offset: BigInt(c.offset),
              reason: c.reason,
              superseded: c.superseded,
            })),
          };
        }),
      getStats: () =>
        mapErrors(async () => {
          const s = await this.o.store.stats();
          return {
            storeId: this.o.storeId,
            capacityBytes: BigInt(s.capacityBytes),
            freeBytes: BigInt(s.freeBytes),
            usedBytes: BigInt(s.usedBytes),
            needleCount: BigInt(s.needleCount),
            volumes: s.volumes.map(volumeStatsMessage),
          };
        }),
      listNeedles: (req) =>
        mapErrors(async () => {
          const limit = Math.min(req.pageSize || 1000, 10_000);
          const page = await this.o.store.listNeedles(req.pageToken || undefined, limit + 1);
          const more = page.length > limit;
          const needles = page.slice(0, limit);
          return {
            needles: needles.map((n) => ({
              blobId: n.blobId,
              volumeId: n.volumeId,
              size: BigInt(n.size),
              writtenAtMs: BigInt(n.writtenAtMs),
            })),
            nextPageToken: more ? (needles[needles.length - 1]?.blobId ?? '') : '',
          };
        }),
    };
  }

  private checkTerm(issuer: 'directory' | 'manager', term: bigint): void {
    if (term === 0n) return;
    const seen = this.terms[issuer];
    if (term < seen) {
      throw new ConnectError(
        `${issuer} term ${term} is older than term ${seen} already seen: the sender was deposed`,
        Code.FailedPrecondition,
      );
    }
    this.terms[issuer] = term;
  }

  /**
   * Streams the blob to disk as chunks arrive and, in parallel, to every store in
   * forward_to; answers only when all of them hold it durably.
   */
  private async write(reqs: AsyncIterable<WriteRequest>, ctx: HandlerContext): Promise<WriteResponse> {
    const it = reqs[Symbol.asyncIterator]();
    const first = await it.next();
    if (first.done || first.value.msg.case !== 'header') {
      throw invalidArgument('the first Write message must be a header');
    }
    const h = first.value.msg.value;
    checkId(h.blobId);
    if (h.sha256.length !== 0 && h.sha256.length !== 32)
      throw invalidArgument('sha256 must be empty or 32 bytes');
    this.checkTerm('directory', h.term);
    const size = Number(h.size);
    if (!Number.isSafeInteger(size)) throw invalidArgument(`size ${h.size} is too large`);
    const targets = h.forwardTo.filter((t) => t.storeId !== this.o.storeId);
    for (const t of targets) {
      if (!t.address) throw invalidArgument(`forward_to entry for store "${t.storeId}" has no address`);
    }

    const forwards = targets.map((t) => this.forward(t, h, ctx));
    let writer: Awaited<ReturnType<Store['beginWrite']>> | undefined;
    try {
      writer = await mapErrors(() => this.o.store.beginWrite(h.blobId, h.cookie, size));
      let received = 0;
      for (;;) {
        const next = await it.next();
        if (next.done) break;
        if (next.value.msg.case !== 'chunk') throw invalidArgument('only chunks may follow the header');
        const chunk = next.value.msg.value;
        if (chunk.length > MAX_CHUNK)
          throw invalidArgument(`chunk of ${chunk.length} bytes exceeds ${MAX_CHUNK}`);
        received += chunk.length;
        if (received > size) throw invalidArgument(`more than the declared ${size} bytes were sent`);
        await Promise.all([writer.write(chunk), ...forwards.map((f) => f.push(chunk))]);
      }
      if (received !== size) {
        throw invalidArgument(
          `stream ended after ${received} of the declared ${size} bytes; nothing was stored`,
        );
      }
      for (const f of forwards) f.end();
      const local = await mapErrors(() => writer!.commit(h.sha256.length === 32 ? h.sha256 : undefined));
      writer = undefined;
      const remote = await Promise.all(forwards.map((f) => f.result));
      const replicas: WrittenReplica[] = [
        create(WrittenReplicaSchema, {
          storeId: this.o.storeId,
          volumeId: local.volumeId,
          offset: BigInt(local.offset),
        }),
        ...remote.flatMap((r) => r.replicas),
      ];
      return create(WriteResponseSchema, {
        blobId: h.blobId,
        size: h.size,
        sha256: local.sha256,
        crc32c: local.crc32c,
        replicas,
      });
    } catch (err) {
      for (const f of forwards) f.abort(err);
      await writer?.abort().catch(() => {});
      // Settle forward results so none is left unhandled.
      await Promise.allSettled(forwards.map((f) => f.result));
      throw toConnectError(err);
    }
  }

  /** Opens a Write stream to one replica; chunks are pushed with backpressure. */
  private forward(target: StoreTarget, header: WriteHeader, ctx: HandlerContext) {
    const pipe = new AsyncPipe<WriteRequest>(4);
    const abort = new AbortController();
    const onParentAbort = () => abort.abort();
    ctx.signal.addEventListener('abort', onParentAbort, { once: true });
    void pipe.push(
      create(WriteRequestSchema, {
        msg: { case: 'header', value: { ...header, forwardTo: [] } },
      }),
    );
    const client = this.o.peers.client(StoreService, target.address);
    const result = client.write(pipe, { signal: abort.signal }).then(
      (res) => res,
      (err: unknown) => {
        const ce = ConnectError.from(err);
        throw new ConnectError(
          `replica store "${target.storeId}" (${target.address}) failed: ${ce.rawMessage}`,
          ce.code === Code.AlreadyExists || ce.code === Code.ResourceExhausted ? ce.code : Code.Unavailable,
        );
      },
    );
    result.catch(() => pipe.end()).finally(() => ctx.signal.removeEventListener('abort', onParentAbort));
    return {
      result,
      push: async (chunk: Uint8Array) => {
        await pipe.push(create(WriteRequestSchema, { msg: { case: 'chunk', value: chunk } }));
      },
      end: () => pipe.end(),
      abort: (err: unknown) => {
        pipe.fail(err);
        abort.abort();
      },
    };
  }

  private async *read(
    blobId: string,
    cookie: bigint,
    offset: bigint,
    length: bigint,
    ctx: HandlerContext,
  ): AsyncGenerator<ReadResponse> {
    try {
      checkId(blobId);
      const r = await this.o.store.openRead(blobId, cookie === 0n ? undefined : cookie);
      const size = r.size;
      const start = Number(offset);
      if (start > size) {
        throw new ConnectError(`offset ${offset} is past the end of the ${size}-byte blob`, Code.OutOfRange);
      }
      const len = length === 0n ? size - start : Math.min(Number(length), size - start);
      this.o.onRead?.(blobId);
      yield create(ReadResponseSchema, {
        msg: {
          case: 'header',
          value: {
            size: BigInt(size),
            offset: BigInt(start),
            length: BigInt(len),
            crc32c: r.crc32c,
            volumeId: r.volumeId,
          },
        },
      });
      for await (const chunk of r.stream(start, len, this.o.readChunkSize)) {
        if (ctx.signal.aborted) return;
        yield create(ReadResponseSchema, { msg: { case: 'chunk', value: chunk } });
      }
    } catch (err) {
      const ce = toConnectError(err);
      if (ce.code === Code.DataLoss) this.o.onCorrupt?.(blobId);
      throw ce;
    }
  }

  /** Pulls a blob from another store's Read stream and writes it here durably. */
  private async replicate(
    blobId: string,
    cookie: bigint,
    source: StoreTarget,
    sha256: Uint8Array,
    ctx: HandlerContext,
  ) {
    const client = this.o.peers.client(StoreService, source.address);
    const stream = client.read({ blobId, cookie }, { signal: ctx.signal });
    let writer: Awaited<ReturnType<Store['beginWrite']>> | undefined;
    let size = 0n;
    try {
      for await (const msg of stream) {
        if (msg.msg.case === 'header') {
          size = msg.msg.value.size;
          // A manager-placed copy may take back an id this store tombstoned (a
          // removal or a repair); the manager re-deletes copies of deleted blobs.
          writer = await this.o.store.beginWrite(blobId, cookie, Number(size), { replaceTombstone: true });
        } else if (msg.msg.case === 'chunk') {
          if (!writer)
            throw new ConnectError(`source ${source.storeId} sent data before its header`, Code.Internal);
          await writer.write(msg.msg.value);
        }
      }
      if (!writer) throw new ConnectError(`source ${source.storeId} sent no header`, Code.Internal);
      const w = writer;
      writer = undefined;
      const local = await w.commit(sha256.length === 32 ? sha256 : undefined);
      return {
        replica: { storeId: this.o.storeId, volumeId: local.volumeId, offset: BigInt(local.offset) },
        size,
      };
    } catch (err) {
      await writer?.abort().catch(() => {});
      const ce = toConnectError(err);
      if (ce.code === Code.InvalidArgument) {
        // A digest mismatch while copying means the source copy is bad.
        throw new ConnectError(
          `copy from ${source.storeId} failed verification: ${ce.rawMessage}`,
          Code.DataLoss,
        );
      }
      throw ce;
    }
  }
}
