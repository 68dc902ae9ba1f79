import { createHash, randomBytes } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { type Client, Code, ConnectError } from '@connectrpc/connect';
import { type BlobInfo, BlobInfoSchema } from '../../gen/haystack/v1/blob_pb.js';
import {
  type BlobMeta,
  type ReplicaLocation,
  ReplicaLocationSchema,
  StoreHealth,
} from '../../gen/haystack/v1/common_pb.js';
import { type StoreService, type WriteRequest, WriteRequestSchema } from '../../gen/haystack/v1/store_pb.js';
import type { BlobCache, CachedBlobMeta } from '../cache/blob-cache.js';
import { validateBlobId } from '../common/blob-id.js';
import { AsyncPipe } from '../rpc/pipe.js';
import type { Logger } from '../server/logger.js';
import type { DirectoryApi } from './directory.js';

export type StoreApi = Pick<Client<typeof StoreService>, 'write' | 'read'>;

export interface GatewayOptions {
  directory: DirectoryApi;
  store(address: string): StoreApi;
  cache: BlobCache;
  log: Logger;
  maxUploadSize: number;
  /** Longest wait for a store's next message before failing over. */
  storeTimeoutMs: number;
  /** Hooks for metrics. */
  onFailover?: (storeId: string, err: ConnectError) => void;
  onBytes?: (direction: 'in' | 'out', n: number) => void;
  /** A read served from the cache (the stores never see it: reported as access heat). */
  onCacheRead?: (blobId: string) => void;
}

export interface UploadHeaderIn {
  blobId: string;
  size: bigint;
  contentType: string;
  /** Lower-case hex or empty. */
  sha256: string;
  replicaCount: number;
}

/** An open read: facts first, then the bytes of the range. */
export interface OpenBlob {
  info: BlobInfo;
  offset: number;
  length: number;
  fromCache: boolean;
  chunks: AsyncIterable<Uint8Array>;
}

/** Bytes per message towards the stores and towards clients. */
export const CHUNK_SIZE = 256 * 1024;
const DEFAULT_CONTENT_TYPE = 'application/octet-stream';
const CONTENT_TYPE = /^[\x21-\x7e]+\/[\x21-\x7e]+(;[\x20-\x7e]*)?$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;

const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

export function invalid(msg: string): ConnectError {
  return new ConnectError(msg, Code.InvalidArgument);
}

function checkId(id: string): void {
  const problem = validateBlobId(id);
  if (problem) throw invalid(problem);
}

function toInfo(meta: BlobMeta, replicaCount?: number): BlobInfo {
  return create(BlobInfoSchema, {
    blobId: meta.blobId,
    size: meta.size,
    sha256: hex(meta.sha256),
    contentType: meta.contentType || DEFAULT_CONTENT_TYPE,
    createdAtMs: meta.createdAtMs,
    replicaCount: replicaCount ?? meta.replicas.length,
    targetReplicaCount: meta.targetReplicaCount,
    cookie: meta.cookie,
  });
}

function cachedInfo(m: CachedBlobMeta): BlobInfo {
  return create(BlobInfoSchema, {
    blobId: m.blobId,
    size: BigInt(m.size),
    sha256: m.sha256,
    contentType: m.contentType,
    createdAtMs: BigInt(m.createdAtMs),
    replicaCount: m.replicaCount,
    targetReplicaCount: m.targetReplicaCount,
    cookie: m.cookie,
  });
}

function cacheMeta(info: BlobInfo): CachedBlobMeta {
  return {
    blobId: info.blobId,
    size: Number(info.size),
    sha256: info.sha256,
    contentType: info.contentType,
    createdAtMs: Number(info.createdAtMs),
    cookie: info.cookie,
    replicaCount: info.replicaCount,
    targetReplicaCount: info.targetReplicaCount,
  };
}

/** Splits b into pieces of at most CHUNK_SIZE bytes. */
function* pieces(b: Uint8Array): Generator<Uint8Array> {
  for (let i = 0; i < b.length; i += CHUNK_SIZE) yield b.subarray(i, Math.min(b.length, i + CHUNK_SIZE));
}

/**
 * The Haystack steps of a gateway, shared by BlobService and GET /blobs/{id}:
 * writes go allocate → stream to the first store (which forwards to the others and
 * answers once every replica is durable) → commit; reads go cache → locate → store,
 * failing over to the next replica on error or timeout, resuming where it stopped.
 */
export class BlobGateway {
  /** Highest directory commit index this gateway has seen (read-your-writes on followers). */
  private commitIndex = 0n;
  /** Store id → address, from every answer that named one. */
  private readonly storeAddresses = new Map<string, string>();
  private lastStatusRefresh = 0;

  constructor(private readonly o: GatewayOptions) {}

  get maxUploadSize(): number {
    return this.o.maxUploadSize;
  }

  /** Validates an upload header before any byte is read. */
  checkHeader(h: UploadHeaderIn): void {
    if (h.blobId) checkId(h.blobId);
    if (h.size > BigInt(this.o.maxUploadSize)) {
      throw new ConnectError(
        `upload of ${h.size} bytes exceeds the limit of ${this.o.maxUploadSize} bytes (MAX_UPLOAD_SIZE)`,
        Code.ResourceExhausted,
      );
    }
    if (h.sha256 && !SHA256_HEX.test(h.sha256)) {
      throw invalid('sha256 must be 64 lower-case hex digits (or empty)');
    }
    if (h.contentType && (h.contentType.length > 255 || !CONTENT_TYPE.test(h.contentType))) {
      throw invalid(`content_type ${JSON.stringify(h.contentType.slice(0, 80))} is not a MIME type`);
    }
    if (h.replicaCount > 16) throw invalid(`replica_count ${h.replicaCount} is above 16`);
  }

  /**
   * Stores a blob whose header has been checked. Answers once the blob is durable
   * on every replica and committed in the directory.
   */
  async write(h: UploadHeaderIn, chunks: AsyncIterable<Uint8Array>, signal?: AbortSignal): Promise<BlobInfo> {
    this.checkHeader(h);
    const size = Number(h.size);
    const blobId = h.blobId || h.sha256 || randomBytes(16).toString('base64url');
    const contentType = h.contentType || DEFAULT_CONTENT_TYPE;

    const alloc = await this.o.directory.allocateWrite({
      blobId,
      size: h.size,
      replicaCount: h.replicaCount,
    });
    const [first, ...rest] = alloc.stores;
    if (!first) throw new ConnectError('the directory allocated no store', Code.Internal);

    const abort = new AbortController();
    const onAbort = () => abort.abort();
    signal?.addEventListener('abort', onAbort);
    const pipe = new AsyncPipe<WriteRequest>(8);
    let storeError: ConnectError | undefined;
    const writing = this.o
      .store(first.address)
      .write(pipe, { signal: abort.signal })
      .catch((e: unknown) => {
        storeError = ConnectError.from(e);
        pipe.end();
        throw storeError;
      });
    writing.catch(() => {});
    const fail = (err: ConnectError): never => {
      pipe.fail(err);
      abort.abort();
      throw err;
    };

    const hash = createHash('sha256');
    const keep: Uint8Array[] | undefined = size <= this.o.cache.maxBlobSize ? [] : undefined;
    let received = 0;
    try {
      await pipe.push(
        create(WriteRequestSchema, {
          msg: {
            case: 'header',
            value: {
              blobId,
              cookie: alloc.cookie,
              size: h.size,
              sha256: h.sha256 ? Buffer.from(h.sha256, 'hex') : new Uint8Array(),
              forwardTo: rest,
              term: alloc.term,
            },
          },
        }),
      );
      for await (const chunk of chunks) {
        if (storeError) break;
        received += chunk.length;
        if (received > size) {
          fail(invalid(`the upload carries more than the ${size} bytes its header announced`));
        }
        hash.update(chunk);
        keep?.push(chunk);
        this.o.onBytes?.('in', chunk.length);
        for (const p of pieces(chunk))
          await pipe.push(create(WriteRequestSchema, { msg: { case: 'chunk', value: p } }));
      }
      if (storeError) throw storeError;
      if (received < size) {
        fail(invalid(`the upload ended after ${received} of the ${size} bytes its header announced`));
      }
      const digest = hash.digest('hex');
      if (h.sha256 && digest !== h.sha256) {
        fail(invalid(`content SHA-256 ${digest} does not match the sha256 ${h.sha256} in the header`));
      }
      pipe.end();
      const written = await writing;
      if (written.replicas.length < alloc.stores.length) {
        throw new ConnectError(
          `store ${first.storeId} acknowledged ${written.replicas.length} of ${alloc.stores.length} replicas`,
          Code.Unavailable,
        );
      }
      const commit = await this.o.directory.commitWrite({
        blobId,
        cookie: alloc.cookie,
        size: h.size,
        sha256: Buffer.from(digest, 'hex'),
        contentType,
        replicas: written.replicas.map((r) => ({ storeId: r.storeId, volumeId: r.volumeId })),
      });
      this.sawIndex(commit.commitIndex);
      const info = commit.blob
        ? toInfo(commit.blob)
        : create(BlobInfoSchema, {
            blobId,
            size: h.size,
            sha256: digest,
            contentType,
            createdAtMs: BigInt(Date.now()),
            replicaCount: written.replicas.length,
            targetReplicaCount: written.replicas.length,
            cookie: alloc.cookie,
          });
      if (keep) await this.o.cache.set({ meta: cacheMeta(info), data: Buffer.concat(keep) }, { fresh: true });
      return info;
    } catch (e) {
      pipe.fail(e);
      abort.abort();
      throw ConnectError.from(e);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Records a directory commit index and shares it with the other gateways. */
  private sawIndex(index: bigint): void {
    if (index > this.commitIndex) this.commitIndex = index;
    void this.o.cache.publishCommitIndex(index);
  }

  /**
   * Blob metadata from the directory; NOT_FOUND for unknown or deleted ids. Asks
   * for at least the highest commit index any gateway has seen, so a follower
   * answers only once it knows every write and delete acknowledged so far.
   */
  async locate(blobId: string): Promise<{ meta: BlobMeta; replicas: ReplicaLocation[] }> {
    checkId(blobId);
    const shared = this.o.cache.sharedCommitIndex();
    let minIndex = this.commitIndex;
    if (shared > minIndex) minIndex = shared; // bigints: no Math.max
    const res = await this.o.directory.locate({ blobIds: [blobId], minIndex });
    const loc = res.locations[0];
    if (!loc?.found || !loc.blob) throw new ConnectError(`blob ${blobId} not found`, Code.NotFound);
    return { meta: loc.blob, replicas: await this.withRecordedReplicas(loc.blob, loc.replicas) };
  }

  /**
   * The replicas the directory offers (best first), then the blob's other recorded
   * replicas the directory left out. Its health view is advisory: just after an
   * election the new leader has heard no heartbeat yet and offers no store at all,
   * while the stores are up. Those are tried last, at addresses learnt earlier (or
   * from GetClusterStatus).
   */
  private async withRecordedReplicas(meta: BlobMeta, offered: ReplicaLocation[]): Promise<ReplicaLocation[]> {
    for (const r of offered) if (r.address) this.storeAddresses.set(r.storeId, r.address);
    const listed = new Set(offered.map((r) => r.storeId));
    const missing = meta.replicas.filter((r) => !listed.has(r.storeId));
    if (missing.length === 0) return offered;
    if (
      missing.some((r) => !this.storeAddresses.has(r.storeId)) &&
      Date.now() - this.lastStatusRefresh > 2_000
    ) {
      this.lastStatusRefresh = Date.now();
      try {
        const status = await this.o.directory.getClusterStatus({ localOnly: true });
        for (const st of status.stores) if (st.address) this.storeAddresses.set(st.storeId, st.address);
      } catch (err) {
        this.o.log.debug({ err: ConnectError.from(err).message }, 'could not learn store addresses');
      }
    }
    const extra = missing
      .filter((r) => this.storeAddresses.has(r.storeId))
      .map((r) =>
        create(ReplicaLocationSchema, {
          storeId: r.storeId,
          address: this.storeAddresses.get(r.storeId) ?? '',
          volumeId: r.volumeId,
          health: StoreHealth.UNSPECIFIED,
        }),
      );
    return [...offered, ...extra];
  }

  async stat(blobId: string): Promise<BlobInfo> {
    const { meta, replicas } = await this.locate(blobId);
    return toInfo(meta, meta.replicas.length || replicas.length);
  }

  /**
   * Opens a read of [offset, offset+length) (length 0: to the end). Fails before
   * any byte when the blob is unknown, the range is out of bounds or no replica
   * answers, so HTTP can still answer with a proper status.
   */
  open(blobId: string, offset = 0, length = 0, signal?: AbortSignal): Promise<OpenBlob> {
    return this.openWith(blobId, (info) => range(Number(info.size), offset, length), signal);
  }

  /**
   * Like open, with the range chosen once the blob's facts are known; `select`
   * answering null reads nothing (HEAD, 304, 416).
   */
  async openWith(
    blobId: string,
    select: (info: BlobInfo) => { offset: number; length: number } | null,
    signal?: AbortSignal,
  ): Promise<OpenBlob> {
    checkId(blobId);
    const nothing = (async function* () {})();
    const cached = await this.o.cache.get(blobId);
    if (cached) {
      const info = cachedInfo(cached.meta);
      const r = select(info);
      if (!r) return { info, offset: 0, length: 0, fromCache: true, chunks: nothing };
      const data = cached.data.subarray(r.offset, r.offset + r.length);
      this.o.onBytes?.('out', data.length);
      this.o.onCacheRead?.(blobId);
      return {
        info,
        ...r,
        fromCache: true,
        chunks: (async function* () {
          yield* pieces(data);
        })(),
      };
    }
    const { meta, replicas } = await this.locate(blobId);
    const info = toInfo(meta, meta.replicas.length || replicas.length);
    const size = Number(meta.size);
    const r = select(info);
    if (!r || r.length === 0)
      return { info, offset: r?.offset ?? 0, length: 0, fromCache: false, chunks: nothing };
    const fill = r.offset === 0 && r.length === size && size <= this.o.cache.maxBlobSize;
    const first = await this.readReplicas(meta, replicas, r.offset, r.length, signal);
    const self = this;
    async function* chunks(): AsyncGenerator<Uint8Array> {
      const keep: Uint8Array[] = [];
      for await (const c of first) {
        if (fill) keep.push(c);
        self.o.onBytes?.('out', c.length);
        yield c;
      }
      if (fill) {
        const data = Buffer.concat(keep);
        // Cache only what is verified: the store checks its CRC, this checks end to end.
        if (createHash('sha256').update(data).digest('hex') === info.sha256) {
          await self.o.cache.set({ meta: cacheMeta(info), data });
        } else {
          self.o.log.error({ blobId }, 'blob content does not match its SHA-256; not cached');
        }
      }
    }
    return { info, ...r, fromCache: false, chunks: chunks() };
  }

  /**
   * The bytes of a range from the replicas, best first: the first store to answer
   * its header serves; when a store fails or stalls mid-stream the next replica
   * continues from the first byte not yet delivered. Resolves once a store has
   * answered (rejects when none does).
   */
  private async readReplicas(
    meta: BlobMeta,
    replicas: ReplicaLocation[],
    offset: number,
    length: number,
    signal?: AbortSignal,
  ): Promise<AsyncIterable<Uint8Array>> {
    const errors: ConnectError[] = [];
    let idx = 0;
    let sent = 0;
    const openNext = async (): Promise<StoreStream | undefined> => {
      while (idx < replicas.length) {
        const rep = replicas[idx++]!;
        const s = new StoreStream(this.o.store(rep.address), this.o.storeTimeoutMs, signal);
        try {
          await s.open(meta.blobId, meta.cookie, offset + sent, length - sent);
          return s;
        } catch (e) {
          const err = ConnectError.from(e);
          if (signal?.aborted) throw err;
          errors.push(err);
          this.o.onFailover?.(rep.storeId, err);
          this.o.log.warn(
            { blobId: meta.blobId, store: rep.storeId, err: err.message },
            'replica read failed',
          );
        }
      }
      return undefined;
    };
    const noneLeft = (): ConnectError => {
      if (errors.length > 0 && errors.every((e) => e.code === Code.NotFound)) {
        return new ConnectError(`blob ${meta.blobId} not found on any replica`, Code.NotFound);
      }
      const why = errors.map((e) => `${Code[e.code]}: ${e.rawMessage}`).join('; ');
      return new ConnectError(
        `no replica of blob ${meta.blobId} could be read (${replicas.length} tried${why ? `: ${why}` : ''})`,
        Code.Unavailable,
      );
    };
    let current = await openNext();
    if (!current) throw noneLeft();
    const self = this;
    return (async function* () {
      while (current) {
        try {
          for await (const c of current.chunks()) {
            sent += c.length;
            yield c;
          }
          if (sent >= length) return;
          throw new ConnectError(`store stream ended after ${sent} of ${length} bytes`, Code.Unavailable);
        } catch (e) {
          const err = ConnectError.from(e);
          if (signal?.aborted) throw err;
          errors.push(err);
          self.o.onFailover?.('', err);
          self.o.log.warn({ blobId: meta.blobId, sent, err: err.message }, 'replica failed mid-stream');
          current.cancel();
          current = await openNext();
        }
      }
      throw noneLeft();
    })();
  }

  async delete(blobId: string): Promise<boolean> {
    checkId(blobId);
    const res = await this.o.directory.delete({ blobId });
    this.sawIndex(res.commitIndex);
    await this.o.cache.invalidate(blobId);
    return res.found;
  }

  async list(
    pageSize: number,
    pageToken: string,
    prefix: string,
  ): Promise<{ blobs: BlobInfo[]; next: string }> {
    const res = await this.o.directory.list({ pageSize: Math.min(pageSize || 100, 1000), pageToken, prefix });
    return { blobs: res.blobs.map((b) => toInfo(b)), next: res.nextPageToken };
  }
}

/** The effective range; OUT_OF_RANGE when it starts past the end. */
export function range(size: number, offset: number, length: number): { offset: number; length: number } {
  if (offset > size) {
    throw new ConnectError(`offset ${offset} is past the end of the blob (${size} bytes)`, Code.OutOfRange);
  }
  const left = size - offset;
  return { offset, length: length === 0 ? left : Math.min(length, left) };
}

/** One store Read stream with a per-message timeout. */
class StoreStream {
  private readonly abort = new AbortController();
  private it: AsyncIterator<{ msg: { case: string | undefined; value?: unknown } }> | undefined;

  constructor(
    private readonly store: StoreApi,
    private readonly timeoutMs: number,
    signal?: AbortSignal,
  ) {
    signal?.addEventListener('abort', () => this.abort.abort(), { once: true });
  }

  private async next() {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.abort.abort();
        reject(new ConnectError(`store did not answer within ${this.timeoutMs} ms`, Code.DeadlineExceeded));
      }, this.timeoutMs);
    });
    try {
      return await Promise.race([this.it!.next(), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Starts the read and waits for its header. */
  async open(blobId: string, cookie: bigint, offset: number, length: number): Promise<void> {
    const stream = this.store.read(
      { blobId, cookie, offset: BigInt(offset), length: BigInt(length) },
      { signal: this.abort.signal },
    );
    this.it = stream[Symbol.asyncIterator]();
    const first = await this.next();
    if (first.done || first.value.msg.case !== 'header') {
      this.cancel();
      throw new ConnectError('store Read stream did not start with a header', Code.Internal);
    }
  }

  async *chunks(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const r = await this.next();
      if (r.done) return;
      if (r.value.msg.case === 'chunk') yield r.value.msg.value as Uint8Array;
    }
  }

  cancel(): void {
    this.abort.abort();
  }
}
