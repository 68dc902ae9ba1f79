/**
 * The Haystack SDK for browsers: Connect over fetch (through Envoy), uploads as
 * one Put message sent with XMLHttpRequest so that progress can be reported.
 */
import { fromBinary } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-web';
import { PutResponseSchema } from '../../gen/haystack/v1/blob_pb.js';
import {
  HaystackClient as CoreClient,
  type HaystackClientOptions,
  type StoredBlob,
  toStoredBlob,
  type UploadOptions,
} from './client.js';
import { abortReason, HaystackError, IntegrityError, toHaystackError } from './errors.js';
import { encodePutRequest, sha256Hex } from './put-body.js';

/** The part of XMLHttpRequest used here (the SDK compiles without the DOM library). */
interface Xhr {
  open(method: string, url: string): void;
  setRequestHeader(name: string, value: string): void;
  send(body: Uint8Array): void;
  abort(): void;
  responseType: string;
  response: unknown;
  status: number;
  upload: { onprogress: ((e: { loaded: number; total: number }) => void) | null };
  onerror: (() => void) | null;
  ontimeout: (() => void) | null;
  onabort: (() => void) | null;
  onload: (() => void) | null;
}
declare const XMLHttpRequest: { new (): Xhr };

export * from './client.js';
export * from './errors.js';
export { encodePutRequest, type PutFields, sha256Hex } from './put-body.js';
export { type Hasher, Sha256 } from './sha256.js';

const CODES: Record<string, Code> = Object.fromEntries(
  Object.entries(Code)
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => [k.replace(/([a-z])([A-Z])/g, '$1_$2').toLowerCase(), v as Code]),
);

export interface BrowserClientOptions extends Partial<HaystackClientOptions> {
  /** Envoy's origin (default: the page's origin). */
  url?: string;
}

/** The Haystack client for browsers. */
export class HaystackClient extends CoreClient {
  readonly url: string;

  constructor(opts: BrowserClientOptions = {}) {
    const url = opts.url ?? (globalThis as unknown as { location: { origin: string } }).location.origin;
    super({
      unaryUploads: true,
      ...opts,
      transport: opts.transport ?? createConnectTransport({ baseUrl: url, useBinaryFormat: true }),
    });
    this.url = url;
  }

  /** The URL an <img src> loads the blob from (needs PUBLIC_READS; else use signedUrl). */
  blobUrl(id: string): string {
    return `${this.url}/blobs/${encodeURIComponent(id)}`;
  }

  /** A signed read URL for an <img src>, valid `ttlSeconds` (default 3600); needs blob:read. */
  async signedUrl(id: string, opts: { ttlSeconds?: number } = {}): Promise<string> {
    return `${this.url}${(await this.signedUrlPath(id, opts)).path}`;
  }

  /**
   * Uploads a File/Blob/bytes with upload progress (XMLHttpRequest: fetch reports
   * none). Retries on UNAVAILABLE; verifies the stored SHA-256. The hash uses Web
   * Crypto; to keep even that and the encoding off the main thread, do them in a
   * Worker (`sha256Hex`, `encodePutRequest` from `put-body`) and call `putEncoded`.
   */
  async uploadWithProgress(source: Blob | Uint8Array, opts: UploadOptions = {}): Promise<StoredBlob> {
    const data = source instanceof Uint8Array ? source : new Uint8Array(await source.arrayBuffer());
    const sha256 = opts.sha256 ?? (await sha256Hex(data));
    const contentType = opts.contentType ?? (source instanceof Uint8Array ? '' : source.type);
    const body = encodePutRequest(data, sha256, {
      contentType,
      replicaCount: opts.replicaCount ?? 0,
      ...(opts.id ? { id: opts.id } : {}),
    });
    return this.putEncoded(body, sha256, data.length, opts);
  }

  /**
   * Sends an encoded PutRequest (`encodePutRequest`) of `size` content bytes whose
   * SHA-256 is `sha256`, with upload progress; retries on UNAVAILABLE and checks
   * the stored SHA-256. Re-uploading content-addressed bytes that exist is success.
   */
  async putEncoded(
    body: Uint8Array,
    sha256: string,
    size: number,
    opts: UploadOptions = {},
  ): Promise<StoredBlob> {
    try {
      return await this.retry(true, opts.signal, async () => {
        const bytes = await xhrPost(
          `${this.url}/haystack.v1.BlobService/Put`,
          body,
          opts,
          size,
          this.o.token,
        );
        const stored = toStoredBlob(fromBinary(PutResponseSchema, bytes).blob);
        if (stored.sha256 !== sha256) {
          throw new IntegrityError(
            `blob ${stored.id} was stored with SHA-256 ${stored.sha256}, sent ${sha256}`,
          );
        }
        return stored;
      });
    } catch (err) {
      if (opts.signal?.aborted) throw abortReason(opts.signal);
      const e = toHaystackError(err);
      if (e.code === Code.AlreadyExists && !opts.id) {
        const existing = await this.stat(sha256).catch(() => undefined);
        if (existing?.sha256 === sha256) return existing;
      }
      throw e;
    }
  }
}

function xhrPost(
  url: string,
  body: Uint8Array,
  opts: UploadOptions,
  total: number,
  token: string,
): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', url);
    xhr.responseType = 'arraybuffer';
    xhr.setRequestHeader('content-type', 'application/proto');
    xhr.setRequestHeader('connect-protocol-version', '1');
    if (opts.timeoutMs) xhr.setRequestHeader('connect-timeout-ms', String(opts.timeoutMs));
    if (token) xhr.setRequestHeader('authorization', `Bearer ${token}`);
    xhr.upload.onprogress = (e) =>
      opts.onProgress?.(Math.min(total, Math.round((e.loaded / e.total) * total)), total);
    xhr.onerror = () => reject(new ConnectError('network error', Code.Unavailable));
    xhr.ontimeout = () => reject(new ConnectError('timed out', Code.DeadlineExceeded));
    const signal = opts.signal;
    signal?.addEventListener('abort', () => xhr.abort(), { once: true });
    xhr.onabort = () =>
      reject(signal?.aborted ? abortReason(signal) : new ConnectError('aborted', Code.Canceled));
    xhr.onload = () => {
      const buf = new Uint8Array(xhr.response as ArrayBuffer);
      if (xhr.status === 200) {
        opts.onProgress?.(total, total);
        resolve(buf);
        return;
      }
      // Connect errors are JSON {code, message}; Envoy's own answers may not be.
      const byStatus: Record<number, Code> = {
        413: Code.ResourceExhausted, // Envoy's size limit
        429: Code.ResourceExhausted, // Envoy's rate limit
        503: Code.Unavailable,
        504: Code.DeadlineExceeded,
      };
      let code = byStatus[xhr.status] ?? Code.Unknown;
      let message = `HTTP ${xhr.status}`;
      try {
        const j = JSON.parse(new TextDecoder().decode(buf)) as { code?: string; message?: string };
        if (j.code && CODES[j.code] !== undefined) code = CODES[j.code]!;
        if (j.message) message = j.message;
      } catch {
        const text = new TextDecoder().decode(buf).trim();
        if (text) message = `${message}: ${text.slice(0, 200)}`;
      }
      reject(new HaystackError(message, code));
    };
    xhr.send(body);
  });
}
