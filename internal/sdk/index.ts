/**
 * The Haystack SDK for Node: `import { HaystackClient } from '@haystack-blobstore/sdk'`
 * (packages/sdk; inside this repository also as the root package, `haystack-blobstore`).
 * Calls go over gRPC (HTTP/2) to Envoy or a gateway; files stream from and to disk.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import {
  type CallOpts,
  HaystackClient as CoreClient,
  type DownloadOptions,
  type HaystackClientOptions,
  type StoredBlob,
  type UploadOptions,
} from './client.js';
import { drained } from './drain.js';
import { createH2GrpcTransport, type H2Transport } from './h2-grpc-transport.js';
import type { Hasher } from './sha256.js';

export * from './client.js';
export * from './errors.js';
export { type Hasher, Sha256 } from './sha256.js';

/** Where Haystack listens by default: the local Envoy of `haystack dev`. */
export const DEFAULT_URL = 'http://127.0.0.1:8080';

export function nodeHasher(): Hasher {
  const h = createHash('sha256');
  return { update: (d) => void h.update(d), hex: () => h.digest('hex') };
}

/**
 * The client certificate for talking to cluster members directly (mTLS, see
 * docs/security.md): HAYSTACK_TLS_CERT, HAYSTACK_TLS_KEY and HAYSTACK_TLS_CA
 * (PEM files), typically an admin identity. Unset: none.
 */
export function clientTlsFromEnv(
  env: NodeJS.ProcessEnv = process.env,
): { cert: string; key: string; ca: string } | undefined {
  const { HAYSTACK_TLS_CERT: cert, HAYSTACK_TLS_KEY: key, HAYSTACK_TLS_CA: ca } = env;
  if (!cert || !key || !ca) return undefined;
  return { cert: readFileSync(cert, 'utf8'), key: readFileSync(key, 'utf8'), ca: readFileSync(ca, 'utf8') };
}

/**
 * HTTP/2 flow control of the SDK's sessions (bytes): a download's stream may have
 * 4 MiB in flight and all streams of a connection 64 MiB (Node's default is 64 KiB
 * for each, which serialises concurrent blob downloads on round trips); DATA frames
 * up to 1 MiB. The cluster's own clients use the same values (server/listener-limits.ts).
 */
const SDK_STREAM_WINDOW = 4 * 1024 * 1024;
const SDK_CONNECTION_WINDOW = 64 * 1024 * 1024;
const SDK_MAX_FRAME_SIZE = 1 << 20;

/**
 * A gRPC transport to `url` (host:port, http://host:port or https://host:port; a path
 * is a prefix of every call's path), over one HTTP/2 connection (sdk/h2-grpc-transport.ts:
 * plain gRPC, about half the CPU per call of connect-node's transport): `close()` closes
 * it. A bare host:port is a cluster member: over mTLS when HAYSTACK_TLS_* name a client
 * certificate (clientTlsFromEnv), plaintext otherwise. A connection that stops answering
 * keepalive pings (10 s) fails its calls UNAVAILABLE; an idle one closes after 60 s.
 */
export function grpcTransport(url: string): H2Transport {
  const tls = clientTlsFromEnv();
  const base = new URL(url.includes('://') ? url : `${tls ? 'https' : 'http'}://${url}`);
  const secure = base.protocol === 'https:';
  return createH2GrpcTransport({
    url: base.origin,
    pathPrefix: base.pathname.replace(/\/+$/, ''),
    session: {
      settings: { initialWindowSize: SDK_STREAM_WINDOW, maxFrameSize: SDK_MAX_FRAME_SIZE },
      // Handed on to net.connect / tls.connect: no Nagle delay for headers and small frames.
      ...({ noDelay: true } as object),
      // Cluster members prove their SPIFFE identity via the CA, not a hostname (dev certs name 127.0.0.1).
      ...(tls && secure ? { ...tls, checkServerIdentity: () => undefined } : {}),
    },
    connectionWindow: SDK_CONNECTION_WINDOW,
    peer: base.host,
    // A reset keeps its own code, as under connect-node: the client retries by code (errors.ts).
    resetCodes: true,
    userAgent: 'haystack-sdk',
    pingIntervalMs: 10_000,
    idleTimeoutMs: 60_000,
  });
}

const MIME: Record<string, string> = {
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.png': 'image/png',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.avif': 'image/avif',
  '.svg': 'image/svg+xml',
  '.bmp': 'image/bmp',
  '.heic': 'image/heic',
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
  '.txt': 'text/plain',
  '.json': 'application/json',
  '.pdf': 'application/pdf',
};

/** The MIME type for a file name (application/octet-stream when unknown). */
export function contentTypeOf(file: string): string {
  return MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
}

export interface NodeClientOptions extends Partial<HaystackClientOptions> {
  /** Envoy or a gateway, e.g. http://127.0.0.1:8080 (default: $HAYSTACK_URL, else DEFAULT_URL). */
  url?: string;
}

/** The Haystack client for Node (gRPC transport, node:crypto hashing, files). */
export class HaystackClient extends CoreClient {
  readonly url: string;

  /** The transport (HTTP/2 connection) this client opened (none when given a transport). */
  private readonly own: H2Transport | undefined;

  constructor(opts: NodeClientOptions = {}) {
    const url = opts.url ?? process.env.HAYSTACK_URL ?? DEFAULT_URL;
    const own = opts.transport ? undefined : grpcTransport(url);
    super({
      hasher: nodeHasher,
      token: process.env.HAYSTACK_TOKEN ?? '',
      ...opts,
      transport: opts.transport ?? own!,
    });
    this.url = url;
    this.own = own;
  }

  protected override async release(): Promise<void> {
    this.own?.close();
  }

  /** A signed read URL (absolute, on this client's endpoint); see signedUrlPath. */
  async signedUrl(id: string, opts: { ttlSeconds?: number; timeoutMs?: number } = {}): Promise<string> {
    return this.absolute((await this.signedUrlPath(id, opts)).path);
  }

  /** A capability URL (absolute, on this client's endpoint; admin tokens only); see capabilityUrlPath. */
  async capabilityUrl(id: string, opts: { timeoutMs?: number } = {}): Promise<string> {
    return this.absolute(await this.capabilityUrlPath(id, opts));
  }

  private absolute(p: string): string {
    const base = this.url.includes('://') ? this.url : `http://${this.url}`;
    return new URL(p, base).toString();
  }

  /**
   * Uploads a file, streamed from disk. Its SHA-256 is computed first (one fast
   * read), so the blob id defaults to the content hash and the gateway verifies it.
   */
  async uploadFile(file: string, opts: UploadOptions = {}): Promise<StoredBlob> {
    const st = await stat(file);
    if (!st.isFile()) throw new Error(`${file} is not a regular file`);
    let sha256 = opts.sha256;
    if (!sha256) {
      const h = createHash('sha256');
      for await (const c of createReadStream(file, { highWaterMark: 1024 * 1024 })) h.update(c as Buffer);
      sha256 = h.digest('hex');
    }
    return this.upload(() => createReadStream(file, { highWaterMark: 256 * 1024 }), {
      contentType: contentTypeOf(file),
      fileName: path.basename(file),
      ...opts,
      sha256,
      size: st.size,
    });
  }

  /**
   * Downloads a blob into a file, verified end to end. The file appears only once
   * complete (written to a temporary name, then renamed).
   */
  async downloadToFile(id: string, file: string, opts: DownloadOptions = {}): Promise<StoredBlob> {
    const tmp = path.join(
      path.dirname(file),
      `.${path.basename(file)}.${randomBytes(4).toString('hex')}.part`,
    );
    const out = createWriteStream(tmp, { mode: 0o600 });
    // A write error (disk full) or a destroy surfaces through `finished`, never as an
    // unhandled 'error' event (ERR_STREAM_DESTROYED).
    let failure: unknown;
    out.on('error', (err) => {
      failure ??= err;
    });
    try {
      const d = await this.downloadStream(id, opts);
      for await (const c of d.chunks) {
        if (failure) throw failure;
        if (!out.write(c)) await drained(out);
      }
      out.end();
      await finished(out);
      if (failure) throw failure;
      await rename(tmp, file);
      return d.info;
    } catch (err) {
      out.destroy();
      // Wait until the stream has let go of the file (it may still be opening), then remove it:
      // nothing partial is left under any name.
      await finished(out).catch(() => {});
      await rm(tmp, { force: true });
      throw err;
    }
  }
}

export type { CallOpts };
