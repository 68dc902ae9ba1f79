import { Code, ConnectError } from '@connectrpc/connect';
import type { UniversalHandler, UniversalServerRequest } from '@connectrpc/connect/protocol';
import { decodeRequest, FrameError, FrameParser } from '../sdk/grpc-wire.js';

/**
 * Request bodies connect-node decodes (Connect, gRPC-Web, and gRPC for the
 * services without a direct path) are checked with the servers' one request
 * decoder (decodeRequest) before connect-node parses them, so bytes that are not
 * the method's message answer INVALID_ARGUMENT, as on the direct gRPC path.
 * connect-node's own binary parse failure says INTERNAL
 * (@connectrpc/connect protocol/serialization.js), blaming the server for the
 * caller's bytes. JSON bodies need no check: connect-node reports those as
 * INVALID_ARGUMENT already.
 *
 * The body passes through unchanged and unbuffered; a bad message is refused
 * before connect-node sees the chunk that completes it. Compressed requests are
 * left to connect-node (it decompresses first).
 */
export function guardDecoding(handler: UniversalHandler, maxMessageBytes: number): UniversalHandler {
  const guarded = (req: UniversalServerRequest) => {
    const kind = bodyKind(req);
    if (kind === undefined) return handler(req);
    const body = req.body as AsyncIterable<Uint8Array>;
    const schema = handler.method.input;
    return handler({
      ...req,
      body:
        kind === 'unary'
          ? checkWhole(body, (b) => decodeRequest(schema, b), maxMessageBytes)
          : checkEnvelopes(body, (b) => decodeRequest(schema, b), maxMessageBytes),
    });
  };
  return Object.assign(guarded, {
    protocolNames: handler.protocolNames,
    service: handler.service,
    method: handler.method,
    requestPath: handler.requestPath,
    allowedMethods: handler.allowedMethods,
    supportedContentType: handler.supportedContentType,
  });
}

/** Binary request bodies: a Connect unary message, or length-prefixed messages; else undefined. */
function bodyKind(req: UniversalServerRequest): 'unary' | 'enveloped' | undefined {
  if (req.method !== 'POST' || !isIterable(req.body)) return undefined;
  for (const h of ['content-encoding', 'connect-content-encoding', 'grpc-encoding']) {
    const v = req.header.get(h);
    if (v && v.toLowerCase() !== 'identity') return undefined;
  }
  const type = (req.header.get('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
  if (type === 'application/proto') return 'unary';
  if (/^application\/(connect\+proto|grpc-web(\+proto)?|grpc(\+proto)?)$/.test(type)) return 'enveloped';
  return undefined;
}

function isIterable(body: unknown): body is AsyncIterable<Uint8Array> {
  return typeof body === 'object' && body !== null && Symbol.asyncIterator in body;
}

/** A Connect unary body: every chunk passed on, the whole message checked before the end is. */
async function* checkWhole(
  body: AsyncIterable<Uint8Array>,
  check: (b: Uint8Array) => void,
  max: number,
): AsyncGenerator<Uint8Array> {
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.byteLength;
    // Over the limit connect-node refuses it (RESOURCE_EXHAUSTED): nothing to keep.
    if (size <= max) parts.push(chunk);
    yield chunk;
  }
  if (size <= max) check(Buffer.concat(parts, size));
}

/** Length-prefixed messages: each one checked before the chunk completing it is passed on. */
async function* checkEnvelopes(
  body: AsyncIterable<Uint8Array>,
  check: (b: Uint8Array) => void,
  max: number,
): AsyncGenerator<Uint8Array> {
  const parser = new FrameParser(max);
  for await (const chunk of body) {
    let messages: Uint8Array[];
    try {
      messages = parser.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      // A compressed flag without a declared encoding is the caller's mistake too.
      throw new ConnectError(err.message, err.code === Code.Internal ? Code.InvalidArgument : err.code);
    }
    for (const m of messages) check(m);
    yield chunk;
  }
}
