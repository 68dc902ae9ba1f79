import { toJson } from '@bufbuild/protobuf';
import { BlobInfoSchema } from '../../gen/haystack/v1/blob_pb.js';
import { type Grant, requireScope, seesCookies } from '../auth/scopes.js';
import type { Logger } from '../server/logger.js';
import type { HttpRequest, HttpResponse, HttpRoute } from '../server/server.js';
import { bearerChallenge, toHttpError } from './access.js';
import type { BlobGateway, UploadHeaderIn } from './blobs.js';
import { answerErrors, contentDisposition } from './http.js';
import { decodeSegment, HttpError } from './http-errors.js';
import type { ReadAccess } from './http-read-access.js';

/**
 * The file name of a request's Content-Disposition (RFC 6266: filename* per RFC 8187 first,
 * then filename), or '' when absent. Folders are dropped (a browser may send a path).
 * @throws HttpError 400 on a filename* that is not UTF-8 percent-encoding.
 */
export function requestFileName(header: string | undefined): string {
  if (!header) return '';
  const star = /filename\*\s*=\s*UTF-8''([^;\s]+)/i.exec(header);
  let name = '';
  if (star?.[1]) name = decodeSegment(star[1]);
  else {
    const plainName = /filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))/i.exec(header);
    name = (plainName?.[1] ?? plainName?.[2] ?? '').replace(/\\(.)/g, '$1');
  }
  return name.split(/[/\\]/).pop() ?? '';
}

/** RFC 9530 Content-Digest `sha-256=:<base64>:` as lower-case hex, or '' when absent. */
export function requestSha256(header: string | undefined): string {
  if (!header) return '';
  const m = /(?:^|,)\s*sha-256\s*=\s*:([A-Za-z0-9+/=]+):/i.exec(header);
  if (!m?.[1]) return '';
  const bytes = Buffer.from(m[1], 'base64');
  if (bytes.length !== 32) throw new HttpError(400, 'Content-Digest sha-256 must be 32 bytes of base64');
  return bytes.toString('hex');
}

/**
 * PUT /blobs/{id} and POST /blobs: a blob from a plain HTTP body (`curl -T photo.jpg`), streamed
 * into the same upload path as BlobService.Upload with the same checks. Needs Content-Length
 * (411 without: the stores allocate the exact size first). Content-Type is kept; the original
 * file name comes from `Content-Disposition: attachment; filename="…"` (RFC 6266) or the
 * `file_name` query parameter; `replicas=N` asks for N replicas; a Content-Digest sha-256
 * (RFC 9530) is verified and, for POST, becomes the id (else the gateway picks a random one).
 * Answers 201 Created with Location and the BlobInfo as JSON; 409 when the id exists; 413 over
 * MAX_UPLOAD_SIZE; 400 for bad input.
 */
export function uploadRoute(gateway: BlobGateway, log: Logger, readAccess: ReadAccess): HttpRoute {
  return async (req: HttpRequest, res: HttpResponse) => {
    const [pathPart = '', query = ''] = (req.url ?? '').split('?', 2);
    const put = req.method === 'PUT' && pathPart.startsWith('/blobs/');
    const post = req.method === 'POST' && (pathPart === '/blobs' || pathPart === '/blobs/');
    if (!put && !post) return false;
    const abort = new AbortController();
    res.once('close', () => {
      if (!res.writableEnded) abort.abort();
    });
    return answerErrors(res, log, `${req.method} /blobs`, async () => {
      const params = new URLSearchParams(query);
      const blobId = put ? decodeSegment(pathPart.slice('/blobs/'.length)) : '';
      if (put && !blobId) throw new HttpError(400, 'PUT needs an id: /blobs/{id} (or POST /blobs)');
      const grant = await writeGrant(req, blobId, readAccess);
      const length = req.headers['content-length'];
      if (length === undefined || !/^\d+$/.test(length)) {
        throw new HttpError(411, 'send Content-Length: the upload size must be known before the first byte');
      }
      const size = BigInt(length);
      if (size > BigInt(gateway.maxUploadSize)) {
        throw new HttpError(
          413,
          `upload of ${size} bytes exceeds the limit of ${gateway.maxUploadSize} bytes (MAX_UPLOAD_SIZE)`,
        );
      }
      const replicas = params.get('replicas') ?? '0';
      if (!/^\d{1,2}$/.test(replicas)) throw new HttpError(400, 'replicas must be a number from 0 to 16');
      const sha256 = requestSha256(req.headers['content-digest'] as string | undefined);
      const header: UploadHeaderIn = {
        blobId,
        size,
        contentType: (req.headers['content-type'] ?? '').trim(),
        sha256,
        replicaCount: Number(replicas),
        fileName: params.get('file_name') ?? requestFileName(req.headers['content-disposition']),
      };
      gateway.checkHeader(header);
      const info = await gateway.write(header, req as AsyncIterable<Uint8Array>, abort.signal);
      const location = `/blobs/${encodeURIComponent(info.blobId)}`;
      res.writeHead(201, {
        'content-type': 'application/json',
        location,
        etag: `"${info.sha256}"`,
        'cache-control': 'no-store',
        ...contentDisposition(info.fileName),
      });
      const visible = seesCookies(grant) ? info : { ...info, cookie: 0n };
      res.end(`${JSON.stringify(toJson(BlobInfoSchema, visible))}\n`);
    });
  };
}

/** The grant of an HTTP upload: a token (or operator certificate) with blob:write on the id. */
async function writeGrant(req: HttpRequest, blobId: string, a: ReadAccess): Promise<Grant> {
  const grant = await a.access.ofHttp(req, a.operator(req));
  if (!grant) {
    throw new HttpError(401, 'uploading needs a token with blob:write (Authorization: Bearer …)', {
      'www-authenticate': bearerChallenge(),
    });
  }
  try {
    requireScope(grant, 'blob:write', blobId);
  } catch (err) {
    throw toHttpError(err);
  }
  return grant;
}
