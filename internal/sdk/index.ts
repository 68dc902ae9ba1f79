/**
 * The Haystack SDK for Node: `import { HaystackClient } from 'haystack-blobstore'`.
 * Calls go over gRPC (HTTP/2) to Envoy or a gateway; files stream from and to disk.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import type { Transport } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import {
  type CallOpts,
  HaystackClient as CoreClient,
  type DownloadOptions,
  type HaystackClientOptions,
  type StoredBlob,
  type UploadOptions,
} from './client.js';
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

/** A gRPC transport to `url` (host:port or http://host:port). */
export function grpcTransport(url: string): Transport {
  return createGrpcTransport({
    baseUrl: url.includes('://') ? url : `http://${url}`,
    pingIntervalMs: 10_000,
    idleConnectionTimeoutMs: 60_000,
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

  constructor(opts: NodeClientOptions = {}) {
    const url = opts.url ?? process.env.HAYSTACK_URL ?? DEFAULT_URL;
    super({ hasher: nodeHasher, ...opts, transport: opts.transport ?? grpcTransport(url) });
    this.url = url;
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
    const out = createWriteStream(tmp);
    try {
      const d = await this.downloadStream(id, opts);
      for await (const c of d.chunks) {
        if (!out.write(c)) await new Promise<void>((r) => out.once('drain', () => r()));
      }
      out.end();
      await finished(out);
      await rename(tmp, file);
      return d.info;
    } catch (err) {
      out.destroy();
      await rm(tmp, { force: true });
      throw err;
    }
  }
}

export type { CallOpts };
