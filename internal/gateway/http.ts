import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Code, ConnectError } from '@connectrpc/connect';
import type { Logger } from '../server/logger.js';
import type { HttpRequest, HttpResponse, HttpRoute } from '../server/server.js';
import type { BlobGateway } from './blobs.js';

const STATUS: Partial<Record<Code, number>> = {
  [Code.InvalidArgument]: 400,
  [Code.NotFound]: 404,
  [Code.OutOfRange]: 416,
  [Code.ResourceExhausted]: 429,
  [Code.Unavailable]: 503,
  [Code.DeadlineExceeded]: 504,
  [Code.Canceled]: 499,
};

function plain(res: HttpResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(`${text}\n`);
}

/** A single "bytes=" range, resolved against size; null when absent or unusable (serve all). */
export function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | 'unsatisfiable' | null {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return null; // several ranges or another unit: the whole blob is a valid answer
  const [, a = '', b = ''] = m;
  if (a === '' && b === '') return null;
  if (a === '') {
    const n = Number(b);
    if (n === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(a);
  const end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
  if (start >= size || end < start) return 'unsatisfiable';
  return { start, end };
}

async function write(res: HttpResponse, chunk: Uint8Array): Promise<void> {
  if ((res as { write(c: Uint8Array): boolean }).write(chunk)) return;
  await new Promise<void>((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

/**
 * GET and HEAD /blobs/{id}: what an <img src> loads. Content-Type, Content-Length,
 * ETag (the SHA-256), Cache-Control, Last-Modified, single byte ranges, 304 on a
 * matching If-None-Match, 404 for unknown or deleted ids.
 */
export function blobRoute(gateway: BlobGateway, log: Logger, cacheControl: string): HttpRoute {
  return async (req: HttpRequest, res: HttpResponse) => {
    const url = req.url ?? '';
    if (!url.startsWith('/blobs/')) return false;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      plain(res, 405, 'only GET and HEAD', { allow: 'GET, HEAD' });
      return true;
    }
    const id = decodeURIComponent(url.slice('/blobs/'.length).split('?')[0] ?? '');
    const abort = new AbortController();
    res.once('close', () => abort.abort());
    try {
      let status = 200;
      let headers: Record<string, string> = {};
      let text = '';
      const body = await gateway.openWith(
        id,
        (info) => {
          const size = Number(info.size);
          const etag = `"${info.sha256}"`;
          headers = {
            'content-type': info.contentType,
            etag,
            'cache-control': cacheControl,
            'accept-ranges': 'bytes',
            'last-modified': new Date(Number(info.createdAtMs)).toUTCString(),
            // User content on the dashboard's origin: never sniffed, never run.
            'x-content-type-options': 'nosniff',
            'content-security-policy': "default-src 'none'; sandbox",
          };
          const inm = req.headers['if-none-match'];
          if (inm && (inm === '*' || inm.split(',').some((t) => t.trim().replace(/^W\//, '') === etag))) {
            status = 304;
            return null;
          }
          let rangeHeader = req.headers.range;
          const ifRange = req.headers['if-range'];
          if (rangeHeader && typeof ifRange === 'string' && ifRange !== etag) rangeHeader = undefined;
          const r = parseRange(rangeHeader, size);
          if (r === 'unsatisfiable') {
            status = 416;
            text = `range not satisfiable: the blob has ${size} bytes\n`;
            headers = { 'content-type': 'text/plain', 'content-range': `bytes */${size}` };
            return null;
          }
          const start = r?.start ?? 0;
          const length = r ? r.end - r.start + 1 : size;
          if (r) {
            status = 206;
            headers['content-range'] = `bytes ${r.start}-${r.end}/${size}`;
          }
          headers['content-length'] = String(length);
          return req.method === 'HEAD' ? null : { offset: start, length };
        },
        abort.signal,
      );
      res.writeHead(status, headers);
      if (text) res.end(text);
      else {
        for await (const chunk of body.chunks) {
          if (abort.signal.aborted) break;
          await write(res, chunk);
        }
        res.end();
      }
    } catch (err) {
      const ce = ConnectError.from(err);
      if (res.headersSent) {
        log.warn({ blobId: id, err: ce.message }, 'blob response cut short');
        res.destroy?.();
        return true;
      }
      const status = STATUS[ce.code] ?? 500;
      if (status >= 500)
        log.warn({ blobId: id, code: Code[ce.code], err: ce.rawMessage }, 'GET /blobs failed');
      plain(res, status, ce.rawMessage, status === 503 ? { 'retry-after': '1' } : {});
    }
    return true;
  };
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.map': 'application/json',
  '.json': 'application/json',
};

/** Static files of the dashboard under /ui/ (index.html for /ui/). */
export function staticRoute(prefix: string, dir: string): HttpRoute {
  const root = path.resolve(dir);
  return async (req, res) => {
    const url = (req.url ?? '').split('?')[0] ?? '';
    if (url === prefix.slice(0, -1)) {
      res.writeHead(301, { location: prefix });
      res.end();
      return true;
    }
    if (!url.startsWith(prefix) || (req.method !== 'GET' && req.method !== 'HEAD')) return false;
    const rel = decodeURIComponent(url.slice(prefix.length)) || 'index.html';
    const file = path.resolve(root, rel);
    if (!file.startsWith(root + path.sep)) {
      plain(res, 404, 'not found');
      return true;
    }
    const st = await stat(file).catch(() => undefined);
    if (!st?.isFile()) {
      plain(res, 404, 'not found');
      return true;
    }
    res.writeHead(200, {
      'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'content-length': String(st.size),
      'cache-control': 'no-cache',
      'x-content-type-options': 'nosniff',
    });
    if (req.method === 'HEAD') {
      res.end();
      return true;
    }
    await new Promise<void>((resolve) => {
      const s = createReadStream(file);
      s.on('error', () => {
        res.destroy?.();
        resolve();
      });
      s.on('end', resolve);
      s.pipe(res as NodeJS.WritableStream);
    });
    return true;
  };
}
