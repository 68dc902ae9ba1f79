import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { drained } from '../sdk/drain.js';
import type { Logger } from '../server/logger.js';
import type { HttpRequest, HttpResponse, HttpRoute } from '../server/server.js';
import type { BlobGateway } from './blobs.js';
import { type ConditionalHeaders, evaluatePreconditions, selectRange } from './http-conditional.js';
import { decodeSegment, HttpError, httpErrorOf } from './http-errors.js';
import { capabilityPermit, type ReadAccess, readPermit } from './http-read-access.js';

/** A short text answer; errors always carry a body saying what to do. */
export function plain(
  res: HttpResponse,
  status: number,
  text: string,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(`${text}\n`);
}

/**
 * Runs an HTTP route body; any error becomes its RFC 9110 answer (httpErrorOf), once. After
 * the headers went out a failure can only cut the response (the client sees a short body).
 */
export async function answerErrors(
  res: HttpResponse,
  log: Logger,
  what: string,
  fn: () => Promise<void>,
): Promise<true> {
  try {
    await fn();
  } catch (err) {
    const e = httpErrorOf(err);
    if (res.headersSent) {
      log.warn({ err: e.message }, `${what}: response cut short`);
      res.destroy?.();
      return true;
    }
    if (e.status >= 500) log.warn({ status: e.status, err: e.message }, `${what} failed`);
    plain(res, e.status, e.message, e.headers);
  }
  return true;
}

async function write(res: HttpResponse, chunk: Uint8Array): Promise<void> {
  if ((res as { write(c: Uint8Array): boolean }).write(chunk)) return;
  await drained(res);
}

/**
 * GET and HEAD /blobs/{id}: what an <img src> loads. Content-Type, Content-Length, ETag (the
 * SHA-256), Cache-Control, Last-Modified, Content-Disposition (the original file name);
 * RFC 9110 §13 conditionals and §14 single byte ranges (http-conditional.ts); 404 for unknown
 * or deleted ids. Who may read: http-read-access.ts (a token, a signed URL, PUBLIC_READS) or
 * the capability URL GET /blobs/{id}/{cookie}. PUT and POST are the upload route's (http-upload.ts).
 */
export function blobRoute(
  gateway: BlobGateway,
  log: Logger,
  cacheControl: string,
  readAccess: ReadAccess,
): HttpRoute {
  return async (req: HttpRequest, res: HttpResponse) => {
    const url = req.url ?? '';
    if (!url.startsWith('/blobs/')) return false;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      plain(res, 405, 'GET and HEAD read a blob; PUT /blobs/{id} or POST /blobs stores one', {
        allow: 'GET, HEAD, PUT',
      });
      return true;
    }
    const abort = new AbortController();
    // Only a response cut short cancels the store read: aborting one that finished would
    // build a DOMException (a stack trace) per request for nothing.
    res.once('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    return answerErrors(res, log, 'GET /blobs', async () => {
      const [rawPath = '', query = ''] = url.slice('/blobs/'.length).split('?', 2);
      // /blobs/{id}, or the capability URL /blobs/{id}/{cookie}.
      const [rawId = '', capability, ...more] = rawPath.split('/');
      if (more.length > 0) throw new HttpError(404, 'not found: /blobs/{id} or /blobs/{id}/{cookie}');
      const id = decodeSegment(rawId);
      const permit =
        capability === undefined
          ? await readPermit(req, id, query, readAccess)
          : capabilityPermit(capability);
      const h = req.headers as ConditionalHeaders;
      let status = 200;
      let headers: Record<string, string> = {};
      let text = '';
      const body = await gateway
        .openWith(
          id,
          (info) => {
            const size = Number(info.size);
            const v = { etag: `"${info.sha256}"`, lastModifiedMs: Number(info.createdAtMs) };
            headers = {
              'content-type': info.contentType,
              etag: v.etag,
              'cache-control': cacheControl,
              'accept-ranges': 'bytes',
              'last-modified': new Date(v.lastModifiedMs).toUTCString(),
              // User content on the dashboard's origin: never sniffed, never run.
              'x-content-type-options': 'nosniff',
              'content-security-policy': "default-src 'none'; sandbox",
              ...contentDisposition(info.fileName),
            };
            const pre = evaluatePreconditions(h, v);
            if (pre !== 'proceed') {
              status = pre;
              if (pre === 412) {
                text = 'precondition failed: the blob does not match If-Match / If-Unmodified-Since';
                headers = { etag: v.etag };
              }
              return null;
            }
            // §14.2: GET is the only method with range semantics; HEAD describes the whole blob.
            const r = req.method === 'GET' ? selectRange(h, size, v) : null;
            if (r === 'unsatisfiable') {
              status = 416;
              text = `range not satisfiable: the blob has ${size} bytes`;
              headers = { 'content-range': `bytes */${size}` };
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
          permit.proof,
        )
        .catch((err: unknown) => {
          // A signed or capability URL must not tell an unknown id from a wrong signature or cookie.
          if (permit.refused && httpErrorOf(err).status === 404) throw permit.refused;
          throw err;
        });
      if (text) {
        plain(res, status, text, headers);
        return;
      }
      res.writeHead(status, headers);
      if (status !== 304 && req.method !== 'HEAD') {
        for await (const chunk of body.chunks) {
          if (abort.signal.aborted) break;
          await write(res, chunk);
        }
      }
      res.end();
    });
  };
}

/**
 * RFC 6266 Content-Disposition carrying the original file name (inline: an <img> still shows
 * the blob); RFC 8187 filename* for any name, with an ASCII-only fallback.
 */
export function contentDisposition(fileName: string | undefined): Record<string, string> {
  if (!fileName) return {};
  const ascii = fileName.replace(/[^\x20-\x7e]|["\\]/g, '_');
  const star = encodeURIComponent(fileName).replace(
    /['()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
  return { 'content-disposition': `inline; filename="${ascii}"; filename*=UTF-8''${star}` };
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
    let rel: string;
    try {
      rel = decodeSegment(url.slice(prefix.length)) || 'index.html';
    } catch (err) {
      const e = httpErrorOf(err);
      plain(res, e.status, e.message);
      return true;
    }
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
