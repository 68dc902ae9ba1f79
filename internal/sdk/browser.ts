/**
 * The Haystack SDK for browsers: Connect over fetch (through Envoy); uploads with
 * XMLHttpRequest so that progress can be reported, either as one Put message
 * (`uploadWithProgress`, `putEncoded`) or as the File itself streamed to the
 * gateway's `PUT /blobs/{id}` (`putFile`: no copy, no MAX_PUT_SIZE cap).
 */
import { fromBinary, fromJson, type JsonValue } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-web';
import { BlobInfoSchema, PutResponseSchema } from '../../gen/haystack/v1/blob_pb.js';
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
  send(body: Uint8Array | Blob): void;
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
    return this.sendChecked(sha256, opts, !opts.id, async () => {
      const bytes = await xhrPost(`${this.url}/haystack.v1.BlobService/Put`, body, opts, size, this.o.token);
      return toStoredBlob(fromBinary(PutResponseSchema, bytes).blob);
    });
  }

  /**
   * Uploads a File/Blob whose SHA-256 is `sha256` (hex, computed beforehand, e.g. in a
   * Worker) by `PUT /blobs/{id}` with the Blob itself as the body: the browser streams
   * it from disk (no copy on the page's thread, no ArrayBuffer of the whole file) and
   * the gateway's HTTP upload takes up to MAX_UPLOAD_SIZE (not the unary Put's
   * MAX_PUT_SIZE). The id is `opts.id` or the SHA-256; Content-Type is `opts.contentType`
   * or the Blob's type; the file name (`opts.fileName` or a File's name) goes in
   * Content-Disposition; a Content-Digest lets the gateway refuse other bytes. Progress
   * comes from `xhr.upload.onprogress`; retries on UNAVAILABLE (503); the stored SHA-256
   * must equal `sha256`. Re-uploading content-addressed bytes that exist is success.
   */
  async putFile(file: Blob, sha256: string, opts: UploadOptions = {}): Promise<StoredBlob> {
    if (!/^[0-9a-f]{64}$/.test(sha256)) {
      throw new HaystackError(`sha256 must be 64 lower-case hex digits, got ${sha256}`, Code.InvalidArgument);
    }
    const id = opts.id ?? sha256;
    const size = file.size;
    const contentType = opts.contentType ?? file.type;
    const fileName = opts.fileName ?? (file as { name?: unknown }).name;
    const headers: Record<string, string> = {
      'content-digest': `sha-256=:${hexToBase64(sha256)}:`,
    };
    if (contentType) headers['content-type'] = contentType;
    if (typeof fileName === 'string' && fileName) {
      headers['content-disposition'] = `attachment; filename*=UTF-8''${encodeURIComponent(fileName)}`;
    }
    const query = opts.replicaCount ? `?replicas=${opts.replicaCount}` : '';
    return this.sendChecked(sha256, opts, id === sha256, async () => {
      const bytes = await xhrSend(
        'PUT',
        `${this.url}/blobs/${encodeURIComponent(id)}${query}`,
        file,
        headers,
        [200, 201],
        opts,
        size,
        this.o.token,
      );
      const json = JSON.parse(new TextDecoder().decode(bytes)) as JsonValue;
      return toStoredBlob(fromJson(BlobInfoSchema, json, { ignoreUnknownFields: true }));
    });
  }

  /**
   * Runs one upload attempt `send` under the client's retry policy (UNAVAILABLE is
   * retried), checks the stored SHA-256 equals `sha256` (IntegrityError if not), and
   * when `contentAddressed` (the id is the SHA-256) treats ALREADY_EXISTS (HTTP 409)
   * on the same bytes as success. An aborted `opts.signal` rejects with its reason.
   */
  private async sendChecked(
    sha256: string,
    opts: UploadOptions,
    contentAddressed: boolean,
    send: () => Promise<StoredBlob>,
  ): Promise<StoredBlob> {
    try {
      return await this.retry(true, opts.signal, async () => {
        const stored = await send();
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
      if (e.code === Code.AlreadyExists && contentAddressed) {
        const existing = await this.stat(sha256).catch(() => undefined);
        if (existing?.sha256 === sha256) return existing;
      }
      throw e;
    }
  }
}

/** Lower-case hex as base64 (for Content-Digest). */
function hexToBase64(hex: string): string {
  let bin = '';
  for (let i = 0; i < hex.length; i += 2)
    bin += String.fromCharCode(Number.parseInt(hex.slice(i, i + 2), 16));
  return btoa(bin);
}

/** A unary Connect call by XMLHttpRequest: an encoded request, its encoded answer. */
function xhrPost(
  url: string,
  body: Uint8Array,
  opts: UploadOptions,
  total: number,
  token: string,
): Promise<Uint8Array> {
  const headers: Record<string, string> = {
    'content-type': 'application/proto',
    'connect-protocol-version': '1',
  };
  if (opts.timeoutMs) headers['connect-timeout-ms'] = String(opts.timeoutMs);
  return xhrSend('POST', url, body, headers, [200], opts, total, token);
}

/**
 * Sends `body` with upload progress (scaled to `total` content bytes) and resolves with the
 * answer's bytes on a status in `ok`; else rejects with a HaystackError whose code comes from
 * a Connect error's JSON, or from the HTTP status (the gateway's HTTP routes answer plain text).
 */
function xhrSend(
  method: string,
  url: string,
  body: Uint8Array | Blob,
  headers: Record<string, string>,
  ok: number[],
  opts: UploadOptions,
  total: number,
  token: string,
): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    xhr.responseType = 'arraybuffer';
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    if (token) xhr.setRequestHeader('authorization', `Bearer ${token}`);
    xhr.upload.onprogress = (e) =>
      opts.onProgress?.(Math.min(total, Math.round(e.total ? (e.loaded / e.total) * total : 0)), total);
    xhr.onerror = () => reject(new ConnectError('network error', Code.Unavailable));
    xhr.ontimeout = () => reject(new ConnectError('timed out', Code.DeadlineExceeded));
    const signal = opts.signal;
    signal?.addEventListener('abort', () => xhr.abort(), { once: true });
    xhr.onabort = () =>
      reject(signal?.aborted ? abortReason(signal) : new ConnectError('aborted', Code.Canceled));
    xhr.onload = () => {
      const buf = new Uint8Array(xhr.response as ArrayBuffer);
      if (ok.includes(xhr.status)) {
        opts.onProgress?.(total, total);
        resolve(buf);
        return;
      }
      // Connect errors are JSON {code, message}; Envoy's and the HTTP routes' answers are not.
      const byStatus: Record<number, Code> = {
        400: Code.InvalidArgument,
        401: Code.Unauthenticated,
        403: Code.PermissionDenied,
        404: Code.NotFound,
        409: Code.AlreadyExists,
        411: Code.InvalidArgument,
        413: Code.ResourceExhausted, // Envoy's or the gateway's size limit
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
