import { create } from '@bufbuild/protobuf';
import { type CallOptions, type Client, Code, createClient, type Transport } from '@connectrpc/connect';
import {
  type BlobInfo,
  BlobService,
  type BlobServiceGetStatsResponse,
  type UploadRequest,
  UploadRequestSchema,
} from '../../gen/haystack/v1/blob_pb.js';
import { DirectoryService, type GetClusterStatusResponse } from '../../gen/haystack/v1/directory_pb.js';
import {
  type GetBlobStatusResponse,
  ReplicationService,
  type ReplicationServiceGetStatsResponse,
} from '../../gen/haystack/v1/replication_pb.js';
import {
  AlreadyExistsError,
  abortReason,
  HaystackError,
  IntegrityError,
  InvalidArgumentError,
  isRetryable,
  toHaystackError,
} from './errors.js';
import { type Hasher, Sha256 } from './sha256.js';

/** A stored blob. */
export interface StoredBlob {
  id: string;
  size: number;
  /** SHA-256 of the content, lower-case hex (also the HTTP ETag). */
  sha256: string;
  contentType: string;
  createdAt: Date;
  /** Replicas holding it now. */
  replicas: number;
  /** Replicas aimed for. */
  targetReplicas: number;
  /** The original file name given at upload, or ''. */
  fileName: string;
}

/** What upload accepts. Bytes, Blobs (browser Files) and factories can be replayed on retry. */
export type UploadSource =
  | Uint8Array
  | ArrayBuffer
  | Blob
  | ReadableStream<Uint8Array>
  | AsyncIterable<Uint8Array>
  | (() => AsyncIterable<Uint8Array>);

export interface CallOpts {
  /** Deadline of the call (per attempt) in milliseconds. */
  timeoutMs?: number;
  /**
   * Cancels the call (retries and backoff included); it then rejects with
   * `signal.reason` (an `AbortError` DOMException by default), not a HaystackError.
   */
  signal?: AbortSignal;
}

export interface UploadOptions extends CallOpts {
  /** Blob id; default: the SHA-256 of the content when known up front, else a random id. */
  id?: string;
  contentType?: string;
  /** Exact size; required for streams of unknown length. */
  size?: number;
  /** SHA-256 hex of the content, if known: the gateway refuses content that does not match. */
  sha256?: string;
  /** Replicas wanted; 0 or absent: the cluster default. */
  replicaCount?: number;
  /** The original file name, kept as metadata (Stat, Content-Disposition); a base name. */
  fileName?: string;
  /** Called as bytes leave: (sent, total). */
  onProgress?: (sent: number, total: number) => void;
}

export interface DownloadOptions extends CallOpts {
  /** First byte (default 0). */
  offset?: number;
  /** Bytes from offset (default: to the end). */
  length?: number;
  /** Called as bytes arrive: (received, total of the range). */
  onProgress?: (received: number, total: number) => void;
}

export interface DownloadStream {
  info: StoredBlob;
  /** Length of the requested range. */
  length: number;
  /** The content; the SHA-256 of a whole-blob download is checked at the end (IntegrityError). */
  chunks: AsyncIterable<Uint8Array>;
}

export interface ListPage {
  blobs: StoredBlob[];
  nextPageToken: string;
}

export interface GatewayStats {
  gatewayId: string;
  cacheBackend: string;
  cacheAvailable: boolean;
  gateway: { hits: number; misses: number; hitRate: number };
  cluster: { hits: number; misses: number; hitRate: number };
  maxUploadSize: number;
  cacheMaxBlobSize: number;
  cacheTtlMs: number;
}

export interface HaystackClientOptions {
  /** How calls reach Envoy or a gateway (gRPC in Node, Connect in browsers). */
  transport: Transport;
  /** Attempts after the first on UNAVAILABLE (default 5). */
  retries?: number;
  /** First backoff delay in ms, doubled each attempt, with full jitter (default 100). */
  retryBaseMs?: number;
  /** Longest backoff delay in ms (default 3000). */
  retryMaxMs?: number;
  /** Default deadline of unary calls in ms (default 30000). */
  timeoutMs?: number;
  /** Incremental SHA-256 (default: a portable implementation; Node passes node:crypto). */
  hasher?: () => Hasher;
  /** Bytes per upload message (default 256 KiB). */
  chunkSize?: number;
  /** Send uploads as one Put message instead of an Upload stream (browsers: no client streaming). */
  unaryUploads?: boolean;
  /**
   * Bearer token (a JWT from `haystack token create`) sent as `authorization: Bearer …` on
   * every call; '' sends none. The Node client defaults to $HAYSTACK_TOKEN.
   */
  token?: string;
}

export function toStoredBlob(b: BlobInfo | undefined): StoredBlob {
  if (!b) throw new HaystackError('the server answered without blob information', Code.Internal);
  return {
    id: b.blobId,
    size: Number(b.size),
    sha256: b.sha256,
    contentType: b.contentType,
    createdAt: new Date(Number(b.createdAtMs)),
    replicas: b.replicaCount,
    targetReplicas: b.targetReplicaCount,
    fileName: b.fileName,
  };
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });

function isReadableStream(x: unknown): x is ReadableStream<Uint8Array> {
  return typeof (x as ReadableStream | undefined)?.getReader === 'function';
}

async function* readStream(s: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = s.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      yield value;
    }
  } finally {
    reader.releaseLock();
  }
}

/** Cuts a source into pieces of at most `size` bytes. */
async function* rechunk(src: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Uint8Array> {
  for await (const c of src) {
    for (let i = 0; i < c.length; i += size) yield c.subarray(i, Math.min(c.length, i + size));
  }
}

/**
 * The Haystack client: typed calls over the generated BlobService, with retries
 * (exponential backoff with jitter) on UNAVAILABLE, deadlines, end-to-end SHA-256
 * checks and clear error types (see errors.ts). Works over any Connect transport:
 * `index.ts` builds a gRPC one in Node, `browser.ts` a Connect one in browsers.
 */
export class HaystackClient {
  readonly blobs: Client<typeof BlobService>;
  protected readonly o: Required<Omit<HaystackClientOptions, 'transport'>> & { transport: Transport };

  constructor(opts: HaystackClientOptions) {
    this.o = {
      retries: 5,
      retryBaseMs: 100,
      retryMaxMs: 3000,
      timeoutMs: 30_000,
      hasher: () => new Sha256(),
      chunkSize: 256 * 1024,
      unaryUploads: false,
      token: '',
      ...opts,
    };
    this.blobs = createClient(BlobService, opts.transport);
  }

  private closed = false;

  /**
   * Closes the client: its connections are released (so a Node process can exit)
   * and later calls reject with FAILED_PRECONDITION. Calls in flight fail.
   * Idempotent. A transport passed in `opts.transport` is the caller's to close.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.release();
  }

  /** Releases what the client owns (the Node client: its HTTP/2 connection). */
  protected async release(): Promise<void> {}

  private checkOpen(): void {
    if (this.closed) throw new HaystackError('the client is closed', Code.FailedPrecondition);
  }

  /** Headers that authorize a plain HTTP request (GET /blobs/{id}) with this client's token; {} without one. */
  authHeaders(): Record<string, string> {
    return this.o.token ? { authorization: `Bearer ${this.o.token}` } : {};
  }

  protected callOptions(o: CallOpts | undefined, unary: boolean): CallOptions {
    const timeoutMs = o?.timeoutMs ?? (unary ? this.o.timeoutMs : undefined);
    return {
      ...(timeoutMs ? { timeoutMs } : {}),
      ...(o?.signal ? { signal: o.signal } : {}),
      ...(this.o.token ? { headers: { authorization: `Bearer ${this.o.token}` } } : {}),
    };
  }

  /** Runs `fn` again after retryable failures, with backoff; maps errors to HaystackErrors. */
  protected async retry<T>(
    idempotent: boolean,
    signal: AbortSignal | undefined,
    fn: (attempt: number) => Promise<T>,
    retries = this.o.retries,
  ): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      this.checkOpen();
      if (signal?.aborted) throw abortReason(signal);
      try {
        return await fn(attempt);
      } catch (err) {
        if (signal?.aborted) throw abortReason(signal);
        if (attempt >= retries || !isRetryable(err, idempotent)) {
          throw toHaystackError(err);
        }
        const cap = Math.min(this.o.retryMaxMs, this.o.retryBaseMs * 2 ** attempt);
        await sleep(Math.random() * cap, signal);
      }
    }
  }

  /**
   * Uploads a blob and resolves once it is durable on every replica. The SHA-256
   * is computed while sending and compared with what the gateway stored.
   */
  async upload(source: UploadSource, opts: UploadOptions = {}): Promise<StoredBlob> {
    let replay: (() => AsyncIterable<Uint8Array>) | undefined;
    let size = opts.size;
    let sha256 = opts.sha256 ?? '';
    let bytes: Uint8Array | undefined;
    if (source instanceof ArrayBuffer) source = new Uint8Array(source);
    if (source instanceof Uint8Array) {
      bytes = source;
      const b = source;
      size = b.length;
      if (!sha256) {
        const h = this.o.hasher();
        h.update(b);
        sha256 = h.hex();
      }
      replay = async function* () {
        yield b;
      };
    } else if (typeof Blob !== 'undefined' && source instanceof Blob) {
      const blob = source;
      size = blob.size;
      replay = () => readStream(blob.stream() as ReadableStream<Uint8Array>);
    } else if (typeof source === 'function') {
      replay = source;
    }
    if (size === undefined) {
      throw new InvalidArgumentError(
        'upload of a stream needs opts.size (the exact byte count)',
        Code.InvalidArgument,
      );
    }
    const total = size;
    const contentType =
      opts.contentType ?? (typeof Blob !== 'undefined' && source instanceof Blob ? source.type : '');
    const oneShot = !replay
      ? isReadableStream(source)
        ? readStream(source)
        : (source as AsyncIterable<Uint8Array>)
      : undefined;
    let used = false;
    const open = (): AsyncIterable<Uint8Array> => {
      if (replay) return replay();
      if (used) throw new HaystackError('the upload stream failed and cannot be replayed', Code.Unavailable);
      used = true;
      return oneShot!;
    };
    const blobId = opts.id ?? '';
    try {
      // A one-shot stream cannot be sent twice: no retries.
      const retries = replay ? this.o.retries : 0;
      return await this.retry(
        true,
        opts.signal,
        async () => {
          const hasher = this.o.hasher();
          let sent = 0;
          let res: BlobInfo | undefined;
          if (this.o.unaryUploads) {
            const data = bytes ?? (await collect(open(), total));
            hasher.update(data);
            res = (
              await this.blobs.put(
                {
                  blobId: blobId || sha256,
                  data,
                  contentType,
                  replicaCount: opts.replicaCount ?? 0,
                  fileName: opts.fileName ?? '',
                },
                this.callOptions(opts, false),
              )
            ).blob;
            opts.onProgress?.(data.length, total);
          } else {
            const chunkSize = this.o.chunkSize;
            const onProgress = opts.onProgress;
            const messages = async function* (): AsyncGenerator<UploadRequest> {
              yield create(UploadRequestSchema, {
                msg: {
                  case: 'header',
                  value: {
                    blobId,
                    size: BigInt(total),
                    contentType,
                    sha256,
                    replicaCount: opts.replicaCount ?? 0,
                    fileName: opts.fileName ?? '',
                  },
                },
              });
              onProgress?.(0, total);
              for await (const c of rechunk(open(), chunkSize)) {
                hasher.update(c);
                sent += c.length;
                yield create(UploadRequestSchema, { msg: { case: 'chunk', value: c } });
                onProgress?.(sent, total);
              }
            };
            res = (await this.blobs.upload(messages(), this.callOptions(opts, false))).blob;
          }
          const stored = toStoredBlob(res);
          const mine = hasher.hex();
          if (stored.sha256 !== mine) {
            throw new IntegrityError(
              `blob ${stored.id} was stored with SHA-256 ${stored.sha256}, sent ${mine}`,
            );
          }
          return stored;
        },
        retries,
      );
    } catch (err) {
      // Content-addressed: the same bytes are already there (an earlier upload, or a
      // retried one whose answer was lost). That is success.
      if (err instanceof AlreadyExistsError && sha256 && (!blobId || blobId === sha256)) {
        // (Not committed after all — an allocation still in flight: report the conflict.)
        const existing = await this.stat(sha256, opts).catch(() => undefined);
        if (existing?.sha256 === sha256) return existing;
      }
      throw err;
    }
  }

  /**
   * Opens a download. Resolves once the gateway sent the blob's facts; the chunks
   * then resume transparently (from the next byte) when the connection fails.
   */
  async downloadStream(id: string, opts: DownloadOptions = {}): Promise<DownloadStream> {
    const start = opts.offset ?? 0;
    let received = 0;
    let info: StoredBlob | undefined;
    let length = 0;
    // The calls' own signal: the caller's, and aborted when the reader stops early (connect's
    // stream iterators have no return(), so a signal is the only way to cancel a call).
    const stop = new AbortController();
    const follow = () => stop.abort(opts.signal?.reason);
    if (opts.signal?.aborted) follow();
    else opts.signal?.addEventListener('abort', follow, { once: true });
    const release = () => opts.signal?.removeEventListener('abort', follow);
    const openAt = async (from: number) => {
      const it = this.blobs
        .download(
          {
            blobId: id,
            offset: BigInt(from),
            length: BigInt(opts.length ? opts.length - (from - start) : 0),
          },
          this.callOptions({ ...opts, signal: stop.signal }, false),
        )
        [Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done || first.value.msg.case !== 'info') {
        throw new HaystackError('the download did not start with the blob information', Code.Internal);
      }
      const got = toStoredBlob(first.value.msg.value);
      if (info && got.sha256 !== info.sha256) {
        throw new IntegrityError(`blob ${id} changed while it was being downloaded`);
      }
      return { it, got };
    };
    let { it, got } = await this.retry(true, opts.signal, () => openAt(start)).catch((err: unknown) => {
      release();
      throw err;
    });
    info = got;
    if (start > info.size) {
      stop.abort();
      release();
      throw new InvalidArgumentError(`offset ${start} is past the end (${info.size})`, Code.OutOfRange);
    }
    length = opts.length ? Math.min(opts.length, info.size - start) : info.size - start;
    const whole = start === 0 && length === info.size;
    const hasher = whole ? this.o.hasher() : undefined;
    const self = this;
    const total = length;
    const blobInfo = info;
    async function* chunks(): AsyncGenerator<Uint8Array> {
      try {
        yield* pieces();
      } finally {
        // A reader that stopped early (break, error) would leave the call open: cancel it.
        if (received < total) stop.abort();
        release();
      }
    }
    async function* pieces(): AsyncGenerator<Uint8Array> {
      let failures = 0;
      while (received < total) {
        try {
          const r = await it.next();
          if (r.done) {
            if (received < total) {
              throw new HaystackError(`download ended after ${received} of ${total} bytes`, Code.Unavailable);
            }
            break;
          }
          if (r.value.msg.case !== 'chunk') continue;
          const c = r.value.msg.value;
          received += c.length;
          hasher?.update(c);
          opts.onProgress?.(received, total);
          yield c;
        } catch (err) {
          if (opts.signal?.aborted) throw abortReason(opts.signal);
          if (err instanceof IntegrityError) throw err;
          if (failures++ >= self.o.retries || !isRetryable(err, true)) {
            throw toHaystackError(err);
          }
          await sleep(
            Math.random() * Math.min(self.o.retryMaxMs, self.o.retryBaseMs * 2 ** failures),
            opts.signal,
          );
          ({ it } = await self.retry(true, opts.signal, () => openAt(start + received)));
        }
      }
      if (hasher) {
        const sum = hasher.hex();
        if (sum !== blobInfo.sha256) {
          throw new IntegrityError(`blob ${id} arrived with SHA-256 ${sum}, expected ${blobInfo.sha256}`);
        }
      }
    }
    return { info, length, chunks: chunks() };
  }

  /** Downloads a blob (or a range) into memory, verified end to end. */
  async download(id: string, opts: DownloadOptions = {}): Promise<{ info: StoredBlob; data: Uint8Array }> {
    const d = await this.downloadStream(id, opts);
    return { info: d.info, data: await collect(d.chunks, d.length) };
  }

  /**
   * Deletes a blob; false when there was none. Later reads are NotFoundError. The id
   * can be uploaded again afterwards (stored anew; see BlobService.Delete in blob.proto).
   */
  async delete(id: string, opts: CallOpts = {}): Promise<boolean> {
    return this.retry(
      true,
      opts.signal,
      async () => (await this.blobs.delete({ blobId: id }, this.callOptions(opts, true))).found,
    );
  }

  /** A blob's metadata. */
  async stat(id: string, opts: CallOpts = {}): Promise<StoredBlob> {
    return this.retry(true, opts.signal, async () =>
      toStoredBlob((await this.blobs.stat({ blobId: id }, this.callOptions(opts, true))).blob),
    );
  }

  /** One page of blobs in id order. */
  async list(
    opts: CallOpts & { prefix?: string; pageSize?: number; pageToken?: string } = {},
  ): Promise<ListPage> {
    return this.retry(true, opts.signal, async () => {
      const res = await this.blobs.list(
        { prefix: opts.prefix ?? '', pageSize: opts.pageSize ?? 100, pageToken: opts.pageToken ?? '' },
        this.callOptions(opts, true),
      );
      return { blobs: res.blobs.map(toStoredBlob), nextPageToken: res.nextPageToken };
    });
  }

  /** Every blob (with the prefix), page after page. */
  async *listAll(opts: CallOpts & { prefix?: string; pageSize?: number } = {}): AsyncGenerator<StoredBlob> {
    let pageToken = '';
    do {
      const page = await this.list({ ...opts, pageToken });
      yield* page.blobs;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** Cache and limits of the gateway that answers. */
  async gatewayStats(opts: CallOpts = {}): Promise<GatewayStats> {
    return this.retry(true, opts.signal, async () => {
      const r: BlobServiceGetStatsResponse = await this.blobs.getStats({}, this.callOptions(opts, true));
      const counts = (c: typeof r.gateway) => ({
        hits: Number(c?.hits ?? 0),
        misses: Number(c?.misses ?? 0),
        hitRate: c?.hitRate ?? 0,
      });
      return {
        gatewayId: r.gatewayId,
        cacheBackend: r.cacheBackend,
        cacheAvailable: r.cacheAvailable,
        gateway: counts(r.gateway),
        cluster: counts(r.cluster),
        maxUploadSize: Number(r.maxUploadSize),
        cacheMaxBlobSize: Number(r.cacheMaxBlobSize),
        cacheTtlMs: Number(r.cacheTtlMs),
      };
    });
  }

  /**
   * A signed read URL path for one blob (`/blobs/{id}?exp=…&sig=…`): anyone holding it may GET
   * the blob until it expires, without a token (an <img src>). Needs blob:read on the id.
   * @param ttlSeconds lifetime, 1..604800 (default 3600).
   */
  async signedUrlPath(
    id: string,
    opts: CallOpts & { ttlSeconds?: number } = {},
  ): Promise<{ path: string; expiresAt: Date }> {
    return this.retry(true, opts.signal, async () => {
      const r = await this.blobs.createSignedUrl(
        { blobId: id, ttlSeconds: opts.ttlSeconds ?? 0 },
        this.callOptions(opts, true),
      );
      return { path: r.path, expiresAt: new Date(Number(r.expiresAt) * 1000) };
    });
  }

  /**
   * The paper's capability URL path of a blob, `/blobs/{id}/{cookie}` (the cookie as 16
   * lower-case hex digits): whoever holds it may GET the blob without a token for as long as the
   * blob exists (no expiry: prefer signedUrlPath). Only admin tokens see cookies, so only they
   * can make one; any other token gets PERMISSION_DENIED.
   */
  async capabilityUrlPath(id: string, opts: CallOpts = {}): Promise<string> {
    return this.retry(true, opts.signal, async () => {
      const blob = (await this.blobs.stat({ blobId: id }, this.callOptions(opts, true))).blob;
      const cookie = blob?.cookie ?? 0n;
      if (cookie === 0n) {
        throw new HaystackError(
          "a capability URL needs the blob's cookie, which only admin tokens see: use signedUrlPath",
          Code.PermissionDenied,
        );
      }
      return `/blobs/${encodeURIComponent(id)}/${cookie.toString(16).padStart(16, '0')}`;
    });
  }

  /** Directories (roles, terms), stores (health, capacity), blob counts. */
  async clusterStatus(opts: CallOpts = {}): Promise<GetClusterStatusResponse> {
    const dir = createClient(DirectoryService, this.o.transport);
    return this.retry(true, opts.signal, () => dir.getClusterStatus({}, this.callOptions(opts, true)));
  }

  /** One blob's replicas, target, access heat (reads per minute, per reporter) and pending tasks. */
  async blobStatus(id: string, opts: CallOpts = {}): Promise<GetBlobStatusResponse> {
    const rep = createClient(ReplicationService, this.o.transport);
    return this.retry(true, opts.signal, () =>
      rep.getBlobStatus({ blobId: id }, this.callOptions(opts, true)),
    );
  }

  /** Replication queue, in-flight work and hot blobs. */
  async replicationStats(opts: CallOpts = {}): Promise<ReplicationServiceGetStatsResponse> {
    const rep = createClient(ReplicationService, this.o.transport);
    return this.retry(true, opts.signal, () => rep.getStats({}, this.callOptions(opts, true)));
  }
}

/** Gathers chunks into one array (sized up front when the length is known). */
async function collect(src: AsyncIterable<Uint8Array>, sizeHint: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const c of src) {
    parts.push(c);
    n += c.length;
  }
  if (parts.length === 1 && parts[0]!.length === n) return parts[0]!;
  const out = new Uint8Array(Math.max(n, 0));
  let o = 0;
  for (const c of parts) {
    out.set(c, o);
    o += c.length;
  }
  void sizeHint;
  return out;
}
