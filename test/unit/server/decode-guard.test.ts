import { create, toBinary } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import type { UniversalHandler, UniversalServerRequest } from '@connectrpc/connect/protocol';
import { describe, expect, it } from 'vitest';
import { BlobService, StatRequestSchema } from '../../../gen/haystack/v1/blob_pb.js';
import { frameMessage } from '../../../internal/sdk/grpc-wire.js';
import { guardDecoding } from '../../../internal/server/decode-guard.js';

/** A handler that reads the whole body (as connect-node does) and reports what it saw. */
function reader(): UniversalHandler & { seen: Uint8Array[] } {
  const seen: Uint8Array[] = [];
  const fn = async (req: UniversalServerRequest) => {
    for await (const chunk of req.body as AsyncIterable<Uint8Array>) seen.push(chunk);
    return { status: 200 };
  };
  return Object.assign(fn, {
    seen,
    protocolNames: ['connect'],
    service: BlobService,
    method: BlobService.method.stat,
    requestPath: '/haystack.v1.BlobService/Stat',
    allowedMethods: ['POST'],
    supportedContentType: Object.assign(() => true, { supported: [] }),
  }) as unknown as UniversalHandler & { seen: Uint8Array[] };
}

function request(contentType: string, chunks: Uint8Array[], extra: Record<string, string> = {}) {
  return {
    httpVersion: '2.0',
    url: 'https://x/haystack.v1.BlobService/Stat',
    method: 'POST',
    header: new Headers({ 'content-type': contentType, ...extra }),
    body: (async function* () {
      yield* chunks;
    })(),
    signal: new AbortController().signal,
  } satisfies UniversalServerRequest;
}

const good = toBinary(StatRequestSchema, create(StatRequestSchema, { blobId: 'a-blob' }));
const bad = new Uint8Array([0x0a, 0xff, 0xff]);

/** The status a call ends with ('OK' when it resolves). */
const statusOf = (p: Promise<unknown>) =>
  p.then(
    () => 'OK',
    (e: unknown) => Code[ConnectError.from(e).code],
  );

describe('decode guard (connect-node request bodies)', () => {
  it('passes good messages through unchanged, split anywhere across chunks', async () => {
    const framed = Buffer.concat([frameMessage(good), frameMessage(good)]);
    for (let cut = 1; cut < framed.length; cut++) {
      const h = reader();
      const res = await guardDecoding(
        h,
        1 << 20,
      )(request('application/grpc-web+proto', [framed.subarray(0, cut), framed.subarray(cut)]));
      expect(res.status).toBe(200);
      expect(Buffer.concat(h.seen).equals(framed)).toBe(true);
    }
    const h = reader();
    await guardDecoding(h, 1 << 20)(request('application/proto', [good.subarray(0, 3), good.subarray(3)]));
    expect(Buffer.concat(h.seen).equals(Buffer.from(good))).toBe(true);
  });

  it('refuses an undecodable message with INVALID_ARGUMENT before the handler sees the chunk completing it', async () => {
    for (const type of ['application/grpc-web+proto', 'application/connect+proto', 'application/grpc']) {
      const h = reader();
      const framed = frameMessage(bad);
      const err = await guardDecoding(
        h,
        1 << 20,
      )(request(type, [framed.subarray(0, 4), framed.subarray(4)])).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(err?.code).toBe(Code.InvalidArgument);
      expect(err?.rawMessage).toMatch(/cannot decode the request message \(haystack\.v1\.StatRequest\)/);
      expect(h.seen.length).toBe(1); // only the first piece, which completed nothing
    }
    expect(await statusOf(guardDecoding(reader(), 1 << 20)(request('application/proto', [bad])))).toBe(
      'InvalidArgument',
    );
    // A compressed flag the request did not announce is the caller's mistake too.
    const flagged = frameMessage(good);
    flagged[0] = 1;
    expect(await statusOf(guardDecoding(reader(), 1 << 20)(request('application/grpc-web', [flagged])))).toBe(
      'InvalidArgument',
    );
  });

  it('leaves JSON and compressed bodies to connect-node', async () => {
    for (const [type, extra] of [
      ['application/json', {}],
      ['application/proto', { 'content-encoding': 'gzip' }],
      ['application/grpc-web+proto', { 'grpc-encoding': 'gzip' }],
    ] as const) {
      const h = reader();
      expect(await statusOf(guardDecoding(h, 1 << 20)(request(type, [bad], extra)))).toBe('OK');
      expect(h.seen).toEqual([bad]);
    }
  });
});
