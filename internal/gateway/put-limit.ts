import { Code, ConnectError } from '@connectrpc/connect';
import type { UniversalHandlerOptions } from '@connectrpc/connect/protocol';
import type { MessageLimit } from '../server/server.js';

/**
 * The bound on a unary BlobService.Put (issue 14). A unary request is one
 * message, which the server must hold whole before the handler runs: four 200 MiB
 * Puts took a gateway to 1.29 GB. So a Put carries at most MAX_PUT_SIZE content
 * bytes; above that the call ends with RESOURCE_EXHAUSTED before the message is
 * read (the gRPC length prefix, or a Connect request's Content-Length) and names
 * the streaming ways in, which hold a few chunks at a time whatever the size.
 */

/** The most MAX_PUT_SIZE may be: below the servers' overall request-message limit (256 MiB). */
export const MAX_PUT_SIZE_LIMIT = 255 * 1024 * 1024;

/** Room in a Put message for the fields besides the content (id, content type, file name: ≤ a few hundred bytes). */
const FIELDS_SLACK = 64 * 1024;

const ADVICE =
  'upload larger blobs with the streaming BlobService.Upload (the Node SDK and `haystack put` stream) or PUT /blobs/{id} with a Content-Length';

/** The RESOURCE_EXHAUSTED message for a Put of `bytes` (message bytes; undefined: unknown). */
export function putTooLargeMessage(maxPutSize: number, bytes?: number): string {
  const got = bytes === undefined ? '' : ` (this one: ${bytes} bytes)`;
  return `a unary Put carries at most ${maxPutSize} bytes of content (MAX_PUT_SIZE)${got}: ${ADVICE}`;
}

/** The direct gRPC server's limit for Put (server.ts ServiceRegistration.messageLimits). */
export function putMessageLimit(maxPutSize: number): MessageLimit {
  return { maxBytes: maxPutSize + FIELDS_SLACK, advice: putTooLargeMessage(maxPutSize) };
}

/** Request bytes a Put of `maxPutSize` content may take: JSON carries the content in base64 (4/3). */
function requestBound(maxPutSize: number, json: boolean): number {
  return (json ? Math.ceil((maxPutSize * 4) / 3) : maxPutSize) + FIELDS_SLACK;
}

/**
 * connect-node handler options for Put (Connect, gRPC-Web, and gRPC that the
 * direct server leaves to it): a declared Content-Length above the bound of its
 * encoding is refused before the body is read; a body without one stops at
 * readMaxBytes (the JSON bound; the handler then checks the content itself).
 */
export function putHandlerOptions(maxPutSize: number): Partial<UniversalHandlerOptions> {
  return {
    readMaxBytes: requestBound(maxPutSize, true),
    requestGate: (ctx) => {
      const length = Number(ctx.requestHeader.get('content-length') ?? '');
      const json = /json/i.test(ctx.requestHeader.get('content-type') ?? '');
      if (Number.isFinite(length) && length > requestBound(maxPutSize, json)) {
        throw new ConnectError(putTooLargeMessage(maxPutSize, length), Code.ResourceExhausted);
      }
    },
  };
}

/** The handler's own check (a chunked body within readMaxBytes): RESOURCE_EXHAUSTED above MAX_PUT_SIZE. */
export function checkPutSize(maxPutSize: number, contentBytes: number): void {
  if (contentBytes > maxPutSize) {
    throw new ConnectError(putTooLargeMessage(maxPutSize, contentBytes), Code.ResourceExhausted);
  }
}
