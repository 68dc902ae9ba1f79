import { createHash, randomBytes } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { type Client, Code, ConnectError } from '@connectrpc/connect';
import type { BlobInfo } from '../../gen/haystack/v1/blob_pb.js';
import type { BlobMeta, ReplicaLocation } from '../../gen/haystack/v1/common_pb.js';
import {
  type ReadHeader,
  type StoreService,
  type WriteRequest,
  WriteRequestSchema,
} from '../../gen/haystack/v1/store_pb.js';
import { contentIdProblem, isContentId } from '../auth/content-id.js';
import { type BlobCache, CacheUnreachableError } from '../cache/blob-cache.js';
import { CLUSTER_MODE_HEADER } from '../directory/peers.js';
import type { StoreAt } from '../rpc/clients.js';
import { fencedTerm } from '../rpc/errors.js';
import { AsyncPipe } from '../rpc/pipe.js';
import type { Logger } from '../server/logger.js';
import {
  cachedInfo,
  cacheMeta,
  checkId,
  DEFAULT_CONTENT_TYPE,
  fileNameProblem,
  invalid,
  toInfo,
} from './blob-info.js';
import { ColdReader } from './cold-read.js';
import { DEFAULT_MAP_STALE_AFTER_MS } from './config.js';
import { type DirectoryApi, leaderCommitIndex } from './directory.js';
import { DirectoryPath } from './directory-path.js';
import { type AckRefusal, GroupPath, type PlacementStoreApi } from './group-path.js';
import type { MetadataPath } from './metadata-path.js';
import type { PlacementView } from './placement-view.js';

export { fileNameProblem, invalid } from './blob-info.js';

export type StoreApi = Pick<Client<typeof StoreService>, 'write' | 'read'>;

export interface GatewayOptions {
  directory: DirectoryApi;
  /** The store client pinned to the store named (see ClientPool.store). */
  store(store: StoreAt): StoreApi;
  cache: BlobCache;
  log: Logger;
  maxUploadSize: number;
  /** Longest wait for a store's next message before failing over. */
  storeTimeoutMs: number;
  /**
   * The followed placement map and the store calls of the placement path. Without
   * it (or while the cluster has no placement groups) the directory path is used.
   */
  placement?: {
    view: PlacementView;
    stores(store: StoreAt): PlacementStoreApi;
    readyTimeoutMs: number;
    /** MIN_REPLICA_COUNT: members that must hold a write before it is acknowledged. */
    minReplicas: number;
    /** MAP_STALE_AFTER (ms; default DEFAULT_MAP_STALE_AFTER_MS): see GroupPath's ack check. */
    mapStaleAfterMs?: number;
    /** A write or delete that did not reach every member was refused at ack time. */
    onAckRefused?: (reason: AckRefusal) => void;
  };
  /** Hooks for metrics. */
  onFailover?: (storeId: string, err: ConnectError) => void;
  onBytes?: (direction: 'in' | 'out', n: number) => void;
  /** A read served from the cache (the stores never see it: reported as access heat). */
  onCacheRead?: (blobId: string) => void;
  /**
   * A read of a cold blob served from its shards (the stores see shard reads, not
   * the blob's: reported as access heat, which may warm it back). `degraded`: decoded.
   */
  onColdRead?: (blobId: string, r: { degraded: boolean; bytes: number; failedShards: number }) => void;
}

export interface UploadHeaderIn {
  blobId: string;
  size: bigint;
  contentType: string;
  /** Lower-case hex or empty. */
  sha256: string;
  replicaCount: number;
  /** The original file name (kept as metadata), or empty. */
  fileName?: string;
}

/** An open read: facts first, then the bytes of the range. */
export interface OpenBlob {
  info: BlobInfo;
  offset: number;
  length: number;
  fromCache: boolean;
  chunks: AsyncIterable<Uint8Array>;
}

/**
 * How a read proves it may see a blob's bytes (issue 13; the paper's cookie, §3.4):
 * - `none`: authorized otherwise (a token with blob:read): no cookie needed;
 * - `cookie`: a capability URL's cookie, sent to every store read (the store refuses a
 *   mismatch as NOT_FOUND) and compared against a cached entry's;
 * - `check`: a signed URL, whose MAC covers the cookie: the cookie is looked up first
 *   (never the bytes), checked, then sent with every store read.
 * A proof that fails answers exactly as an unknown id (`blob … not found`, NOT_FOUND).
 */
export type CookieProof =
  | { kind: 'none' }
  | { kind: 'cookie'; cookie: bigint }
  | { kind: 'check'; ok: (cookie: bigint) => boolean };

const NO_PROOF: CookieProof = { kind: 'none' };

/** The one answer for an unknown id and a failed cookie proof: no existence oracle. */
export const notFound = (blobId: string) => new ConnectError(`blob ${blobId} not found`, Code.NotFound);

function proves(p: CookieProof, cookie: bigint): boolean {
  if (p.kind === 'cookie') return cookie === p.cookie;
  if (p.kind === 'check') return p.ok(cookie);
  return true;
}

/** Bytes per message towards the stores and towards clients. */
export const CHUNK_SIZE = 256 * 1024;
const CONTENT_TYPE = /^[\x21-\x7e]+\/[\x21-\x7e]+(;[\x20-\x7e]*)?$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;

/** Splits b into pieces of at most CHUNK_SIZE bytes. */
function* pieces(b: Uint8Array): Generator<Uint8Array> {
  for (let i = 0; i < b.length; i += CHUNK_SIZE) yield b.subarray(i, Math.min(b.length, i + CHUNK_SIZE));
}

/**
 * The Haystack steps of a gateway, shared by BlobService and GET /blobs/{id}:
 * writes go plan (metadata path) → stream to the first store (which forwards to the
 * others and answers once every replica is durable) → finish; reads go cache →
 * locate → store, failing over to the next replica on error or timeout, resuming
 * where it stopped. The metadata path is the directory's per-blob records (v1) or
 * placement groups (no directory call per blob).
 */
export class BlobGateway {
  private readonly directoryPath: DirectoryPath;
  private readonly groupPath: GroupPath | undefined;

  private readonly cold: ColdReader | undefined;

  constructor(private readonly o: GatewayOptions) {
    this.directoryPath = new DirectoryPath(o.directory, o.cache, o.log);
    if (o.placement) {
      this.cold = new ColdReader({
        view: o.placement.view,
        store: o.placement.stores,
        // A shard read streams a whole shard range: twice a replica read's wait for its first answer.
        shardTimeoutMs: 2 * o.storeTimeoutMs,
        log: o.log,
      });
      this.groupPath = new GroupPath(
        o.placement.view,
        o.placement.stores,
        o.directory,
        o.log,
        o.storeTimeoutMs,
        o.placement.minReplicas,
        {
          mapStaleAfterMs: o.placement.mapStaleAfterMs ?? DEFAULT_MAP_STALE_AFTER_MS,
          leaderIndex: () => leaderCommitIndex(o.directory),
          ...(o.placement.onAckRefused ? { onRefused: o.placement.onAckRefused } : {}),
        },
      );
    }
  }

  /** The metadata path for this cluster: placement groups once the followed map has them. */
  private async path(): Promise<MetadataPath> {
    const p = this.o.placement;
    if (!p || !this.groupPath) return this.directoryPath;
    await p.view.whenReady(p.readyTimeoutMs);
    return p.view.state.placement.enabled ? this.groupPath : this.directoryPath;
  }

  /**
   * Runs `op` on this cluster's metadata path. A new cluster's leader creates the
   * placement groups seconds after it starts, and this gateway learns of them from the
   * push stream; a directory-path call made before its view applied them is refused
   * before anything is done (FAILED_PRECONDITION, `haystack-cluster-mode: placement`).
   * Then the view catches up with the leader's commit index and `op` runs again by
   * group; UNAVAILABLE (retry) when it cannot catch up within readyTimeoutMs.
   */
  private async onPath<T>(op: (path: MetadataPath) => Promise<T>): Promise<T> {
    const path = await this.path();
    const p = this.o.placement;
    if (path !== this.directoryPath || !p || !this.groupPath) return op(path);
    try {
      return await op(path);
    } catch (err) {
      if (!(err instanceof ConnectError) || err.metadata.get(CLUSTER_MODE_HEADER) !== 'placement') throw err;
      const caughtUp = await p.view.catchUp(p.readyTimeoutMs, () => leaderCommitIndex(this.o.directory));
      if (!caughtUp || !p.view.state.placement.enabled) {
        throw new ConnectError(
          `the directory has placement groups and this gateway's placement map did not catch up with the leader within ${p.readyTimeoutMs} ms (no leader answered, or the push stream lags): retry`,
          Code.Unavailable,
        );
      }
      this.o.log.info('placement view caught up with the directory: calls go by placement group');
      return op(this.groupPath);
    }
  }

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
    // Content ids are earned: a declared sha256 must already agree with a content-address id.
    if (h.blobId && isContentId(h.blobId)) {
      const problem = contentIdProblem(h.blobId, h.sha256 || h.blobId.toLowerCase());
      if (problem) throw invalid(problem);
    }
    if (h.contentType && (h.contentType.length > 255 || !CONTENT_TYPE.test(h.contentType))) {
      throw invalid(`content_type ${JSON.stringify(h.contentType.slice(0, 80))} is not a MIME type`);
    }
    if (h.replicaCount > 16) throw invalid(`replica_count ${h.replicaCount} is above 16`);
    if (h.fileName) {
      const problem = fileNameProblem(h.fileName);
      if (problem) throw invalid(`file_name ${JSON.stringify(h.fileName.slice(0, 80))} ${problem}`);
    }
  }

  /**
   * Stores a blob whose header has been checked. Answers once the blob is durable
   * on every replica and committed in the directory.
   */
  async write(h: UploadHeaderIn, chunks: AsyncIterable<Uint8Array>, signal?: AbortSignal): Promise<BlobInfo> {
    this.checkHeader(h);
    const size = Number(h.size);
    const blobId = h.blobId || h.sha256 || randomBytes(16).toString('base64url');
    // A content-address id is the SHA-256 the content must have: the store checks it too.
    const sha256 = h.sha256 || (isContentId(blobId) ? blobId : '');
    const contentType = h.contentType || DEFAULT_CONTENT_TYPE;

    const { path, plan } = await this.onPath(async (path) => ({
      path,
      plan: await path.planWrite(blobId, h.size, h.replicaCount),
    }));
    const [first, ...rest] = plan.targets;
    if (!first) throw new ConnectError('no store to write to', Code.Internal);

    const abort = new AbortController();
    const onAbort = () => abort.abort();
    signal?.addEventListener('abort', onAbort);
    const pipe = new AsyncPipe<WriteRequest>(8);
    let storeError: ConnectError | undefined;
    const writing = this.o
      .store(first)
      .write(pipe, { signal: abort.signal })
      .catch((e: unknown) => {
        const ce = ConnectError.from(e);
        // A store has seen a newer directory term: the view learns its directory may be behind.
        const seen = fencedTerm(ce);
        if (seen !== undefined) this.o.placement?.view.noteStoreTerm(seen);
        storeError = staleTermAsUnavailable(ce, first.storeId, plan.term);
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
    // The push's write lease, asked now (beside the upload) and awaited before the stores'
    // stream ends: it is in the cache before the write can commit, so a delete acknowledged
    // after the commit revokes it and the push cannot land after that delete (BlobCache.writeLease).
    const leasing = keep ? this.o.cache.writeLease(blobId) : undefined;
    let received = 0;
    try {
      await pipe.push(
        create(WriteRequestSchema, {
          msg: {
            case: 'header',
            value: {
              blobId,
              cookie: plan.cookie,
              size: h.size,
              sha256: sha256 ? Buffer.from(sha256, 'hex') : new Uint8Array(),
              forwardTo: rest,
              term: plan.term,
              contentType,
              fileName: h.fileName ?? '',
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
      if (sha256 && digest !== sha256) {
        fail(
          invalid(
            h.sha256
              ? `content SHA-256 ${digest} does not match the sha256 ${h.sha256} in the header`
              : (contentIdProblem(blobId, digest) ?? 'content SHA-256 mismatch'),
          ),
        );
      }
      const lease = await leasing;
      pipe.end();
      const written = await writing;
      if (written.replicas.length < plan.targets.length) {
        throw new ConnectError(
          `store ${first.storeId} acknowledged ${written.replicas.length} of ${plan.targets.length} replicas`,
          Code.Unavailable,
        );
      }
      const info = await path.finishWrite({
        blobId,
        size: h.size,
        sha256: Buffer.from(digest, 'hex'),
        contentType,
        fileName: h.fileName ?? '',
        written,
        plan,
      });
      if (keep && lease)
        await this.o.cache.set({ meta: cacheMeta(info), data: Buffer.concat(keep) }, { push: lease });
      return info;
    } catch (e) {
      // No push: fills of the id need not wait for the lease to expire.
      if (leasing) void leasing.then((l) => this.o.cache.release(l));
      pipe.fail(e);
      abort.abort();
      throw ConnectError.from(e);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Blob metadata and its replicas, best first; NOT_FOUND for unknown or deleted ids. */
  async locate(blobId: string): Promise<{ meta: BlobMeta; replicas: ReplicaLocation[] }> {
    checkId(blobId);
    return this.onPath((path) => path.locate(blobId));
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
  open(
    blobId: string,
    offset: number | bigint = 0,
    length: number | bigint = 0,
    signal?: AbortSignal,
  ): Promise<OpenBlob> {
    return this.openWith(blobId, (info) => range(Number(info.size), offset, length), signal);
  }

  /**
   * Like open, with the range chosen once the blob's facts are known; `select`
   * answering null reads nothing (HEAD, 304, 416). `proof`: how a public read proves it may
   * see the blob (CookieProof); the stores check the cookie on every read that carries one.
   */
  async openWith(
    blobId: string,
    select: (info: BlobInfo) => { offset: number; length: number } | null,
    signal?: AbortSignal,
    proof: CookieProof = NO_PROOF,
  ): Promise<OpenBlob> {
    checkId(blobId);
    const nothing = (async function* () {})();
    const cached = await this.o.cache.get(blobId);
    if (cached) {
      const info = cachedInfo(cached.meta);
      // Cache entries are MACed (cache/integrity.ts): their cookie is the needle's.
      if (!proves(proof, info.cookie)) throw notFound(blobId);
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
    // Taken before the read observes the blob: a delete either revokes it or is seen by
    // the read, so a fill under it never brings a deleted blob back (BlobCache.lease).
    const lease = await this.o.cache.lease(blobId);
    /** Whether the chunks generator owns the lease (fills under it or gives it back). */
    let handedOver = false;
    try {
      // Placement groups: the store's Read header carries the facts, so a whole-blob
      // read is one store call (with a capability's cookie, checked by the store); the
      // directory path, and a signed URL (its cookie is checked before any read), locate first.
      const found: { meta: BlobMeta; replicas: ReplicaLocation[]; opened?: StoreStream } = await this.onPath(
        (path) =>
          path instanceof GroupPath && proof.kind !== 'check'
            ? this.openFirst(path, blobId, signal, proof.kind === 'cookie' ? proof.cookie : 0n)
            : path.locate(blobId).catch((e: unknown) => {
                throw ConnectError.from(e).code === Code.NotFound ? notFound(blobId) : e;
              }),
      );
      if (!proves(proof, found.meta.cookie)) {
        found.opened?.cancel();
        throw notFound(blobId);
      }
      const { meta, replicas } = found;
      let opened = found.opened;
      const info = toInfo(meta, meta.replicas.length || replicas.length);
      const size = Number(meta.size);
      const r = select(info);
      const whole = r !== null && r.offset === 0 && r.length === size;
      if (opened && (!whole || size === 0)) {
        opened.cancel();
        opened = undefined;
      }
      if (!r || r.length === 0)
        return { info, offset: r?.offset ?? 0, length: 0, fromCache: false, chunks: nothing };
      const fill = whole && size <= this.o.cache.maxBlobSize;
      const first = meta.cold
        ? await this.readCold(meta, r.offset, r.length, signal)
        : await this.readReplicas(meta, replicas, r.offset, r.length, signal, opened);
      const self = this;
      async function* chunks(): AsyncGenerator<Uint8Array> {
        let used = false;
        try {
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
              used = true;
              await self.o.cache.set({ meta: cacheMeta(info), data }, { lease });
            } else {
              self.o.log.error({ blobId }, 'blob content does not match its SHA-256; not cached');
            }
          }
        } finally {
          if (fill && !used) void self.o.cache.release(lease);
        }
      }
      handedOver = fill;
      return { info, ...r, fromCache: false, chunks: chunks() };
    } finally {
      if (!handedOver) void this.o.cache.release(lease);
    }
  }

  /**
   * A cold blob's range from its stripe's shards (cold-read.ts), read and checked
   * before the first byte is answered, then streamed in CHUNK_SIZE pieces.
   */
  private async readCold(
    meta: BlobMeta,
    offset: number,
    length: number,
    signal?: AbortSignal,
  ): Promise<AsyncIterable<Uint8Array>> {
    if (!this.cold) throw new ConnectError('cold blobs need placement groups', Code.FailedPrecondition);
    const r = await this.cold.read(meta, offset, length, signal);
    this.o.onColdRead?.(meta.blobId, {
      degraded: r.degraded,
      bytes: r.data.length,
      failedShards: r.failed.size,
    });
    return (async function* () {
      yield* pieces(r.data);
    })();
  }

  /**
   * The bytes of a range from the replicas, best first: the first store to answer
   * its header serves; when a store fails or stalls mid-stream the next replica
   * continues from the first byte not yet delivered. Resolves once a store has
   * answered (rejects when none does).
   */
  /**
   * Placement groups: opens a whole-blob Read on the group's readable stores, best
   * first, and takes the blob's facts from the first header. NOT_FOUND only when
   * every store asked answered NOT_FOUND (a member that missed a write never hides
   * it while another has it).
   */
  private async openFirst(
    path: GroupPath,
    blobId: string,
    signal: AbortSignal | undefined,
    cookie: bigint,
  ): Promise<{ meta: BlobMeta; replicas: ReplicaLocation[]; opened?: StoreStream }> {
    const replicas = path.readers(blobId);
    const errors: string[] = [];
    let misses = 0;
    let damaged = 0;
    for (const [i, rep] of replicas.entries()) {
      const s = new StoreStream(this.o.store(rep), this.o.storeTimeoutMs, signal);
      try {
        const header = await s.open(blobId, cookie, 0, 0);
        if (!header.needle)
          throw new ConnectError('store Read header carries no needle facts', Code.Internal);
        const ordered = [rep, ...replicas.filter((_, j) => j !== i)];
        return { meta: path.metaOf(header.needle, ordered), replicas: ordered, opened: s };
      } catch (e) {
        const err = ConnectError.from(e);
        if (signal?.aborted) throw err;
        if (err.code === Code.FailedPrecondition) {
          // A cold stub (the store names the stripe): its Stat answers the blob's facts and ColdRef.
          const needle = await this.o.placement
            ?.stores(rep)
            .stat({ blobId }, { timeoutMs: this.o.storeTimeoutMs })
            .then((r) => r.needle)
            .catch(() => undefined);
          if (needle?.cold) {
            const ordered = [rep, ...replicas.filter((_, j) => j !== i)];
            return { meta: path.metaOf(needle, ordered), replicas: ordered };
          }
        }
        if (err.code === Code.NotFound) misses++;
        else {
          if (err.code === Code.DataLoss) damaged++;
          errors.push(`${rep.storeId}: ${Code[err.code]}: ${err.rawMessage}`);
          this.o.onFailover?.(rep.storeId, err);
        }
      }
    }
    if (misses > 0 && errors.length === 0) throw notFound(blobId);
    throw new ConnectError(
      `no replica of blob ${blobId} could be read (${replicas.length} tried${errors.length ? `: ${errors.join('; ')}` : ''})`,
      noneReadable(damaged, errors.length),
    );
  }

  private async readReplicas(
    meta: BlobMeta,
    replicas: ReplicaLocation[],
    offset: number,
    length: number,
    signal?: AbortSignal,
    opened?: StoreStream,
  ): Promise<AsyncIterable<Uint8Array>> {
    const errors: ConnectError[] = [];
    // An already opened stream is on replicas[0].
    let idx = opened ? 1 : 0;
    let sent = 0;
    const openNext = async (): Promise<StoreStream | undefined> => {
      while (idx < replicas.length) {
        const rep = replicas[idx++]!;
        const s = new StoreStream(this.o.store(rep), this.o.storeTimeoutMs, signal);
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
      if (errors.length > 0 && errors.every((e) => e.code === Code.NotFound)) return notFound(meta.blobId);
      const why = errors.map((e) => `${Code[e.code]}: ${e.rawMessage}`).join('; ');
      const failed = errors.filter((e) => e.code !== Code.NotFound);
      return new ConnectError(
        `no replica of blob ${meta.blobId} could be read (${replicas.length} tried${why ? `: ${why}` : ''})`,
        noneReadable(failed.filter((e) => e.code === Code.DataLoss).length, failed.length),
      );
    };
    let current = opened ?? (await openNext());
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

  /**
   * Acknowledged only once the shared cache was told (else other gateways keep serving the
   * blob): UNAVAILABLE otherwise. The retry, whose stores answer not found, tells it again.
   */
  async delete(blobId: string): Promise<boolean> {
    checkId(blobId);
    const found = await this.onPath((path) => path.delete(blobId));
    await this.o.cache.invalidate(blobId).catch((e: unknown) => {
      if (!(e instanceof CacheUnreachableError)) throw e;
      // The cache's address and Redis's own words go to the log, not to the caller.
      this.o.log.warn(
        { blobId, cache: e.where, err: e.why },
        'delete not acknowledged: the blob cache could not be told',
      );
      throw new CacheUnreachableError(
        e.where,
        e.why,
        `blob ${blobId} is deleted on the stores, but the shared blob cache could not be told, ` +
          'so other gateways may still serve it; retry: deletes are idempotent',
      );
    });
    return found;
  }

  async list(
    pageSize: number,
    pageToken: string,
    prefix: string,
  ): Promise<{ blobs: BlobInfo[]; next: string }> {
    return this.onPath((path) => path.list(pageSize, pageToken, prefix));
  }
}

/** The effective range; OUT_OF_RANGE when it starts past the end. */
export function range(
  size: number,
  offset: number | bigint,
  length: number | bigint,
): { offset: number; length: number } {
  // Compared as bigints: a uint64 offset (up to 2^64-1) is named exactly, never as a float.
  if (BigInt(offset) > BigInt(size)) {
    throw new ConnectError(`offset ${offset} is past the end of the blob (${size} bytes)`, Code.OutOfRange);
  }
  const left = size - Number(offset);
  const len = Number(length);
  return { offset: Number(offset), length: len === 0 ? left : Math.min(len, left) };
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
  async open(blobId: string, cookie: bigint, offset: number, length: number): Promise<ReadHeader> {
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
    return first.value.msg.value as ReadHeader;
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

/**
 * The status when no replica could be read: DATA_LOSS when every replica that
 * failed (not counting those without the blob) answered DATA_LOSS — no intact copy
 * was seen, so retrying cannot help (the manager repairs from an intact copy if one
 * exists) — else UNAVAILABLE (a replica down or slow: a retry may reach it).
 */
function noneReadable(damaged: number, failed: number): Code {
  return damaged > 0 && damaged === failed ? Code.DataLoss : Code.Unavailable;
}

/**
 * The first store refused the write's directory term as deposed: a newer leader
 * took office and this gateway's placement view has not caught up (it follows one
 * directory's WatchMetadata; a directory cut off from its peers keeps serving the
 * old term, docs/faults.md N5; the view then follows another directory:
 * PlacementView.noteStoreTerm). Nothing was written; a later attempt carries the
 * new term once the view has it: UNAVAILABLE (the SDK retries), not the store's
 * FAILED_PRECONDITION. A refusal of a term not older than the view's is passed on.
 */
function staleTermAsUnavailable(err: ConnectError, storeId: string, term: bigint): ConnectError {
  const seen = fencedTerm(err);
  if (seen === undefined || seen <= term) return err;
  return new ConnectError(
    `store ${storeId} has seen directory term ${seen}, this gateway's placement view is at term ${term} ` +
      '(a new leader took office; the view catches up): retry',
    Code.Unavailable,
    err.metadata,
    undefined,
    err,
  );
}
