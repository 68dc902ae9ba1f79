import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { addAbortSignal } from 'node:stream';
import { create, toBinary } from '@bufbuild/protobuf';
import { Code, createClient } from '@connectrpc/connect';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Health } from '../../../gen/grpc/health/v1/health_pb.js';
import { BlobInfoSchema, DownloadResponseSchema } from '../../../gen/haystack/v1/blob_pb.js';
import { isRetryable } from '../../../internal/sdk/errors.js';
import { frameMessage } from '../../../internal/sdk/grpc-wire.js';
import { grpcTransport, HaystackClient } from '../../../internal/sdk/index.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');

/** A bare HTTP/2 server answering every stream with `answer`; closed after each test. */
let server: http2.Http2Server | undefined;
async function serve(answer: (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void) {
  server = http2.createServer();
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {}); // a stream the test resets errors on this side too
    answer(stream, headers);
  });
  await new Promise<void>((r) => server?.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}
afterEach(async () => {
  const s = server;
  server = undefined;
  await new Promise<void>((r) => (s ? s.close(() => r()) : r()));
});

const GRPC_OK_HEADERS = { ':status': 200, 'content-type': 'application/grpc' };

async function failureOf(url: string) {
  const transport = grpcTransport(url);
  try {
    return await createClient(Health, transport)
      .check({})
      .then(
        () => undefined,
        (e: unknown) => e as { code: Code; message: string },
      );
  } finally {
    transport.close();
  }
}

describe("the SDK's gRPC transport (grpcTransport)", () => {
  it('reports a server reset by its HTTP/2 code, as connect-node did: CANCEL is CANCELED and retried', async () => {
    const url = await serve((stream) => {
      stream.respond(GRPC_OK_HEADERS);
      // RST_STREAM CANCEL alone (stream.close(CANCEL) would first end the stream).
      setTimeout(() => addAbortSignal(AbortSignal.abort(), stream), 20);
    });
    const err = await failureOf(url);
    expect(err).toMatchObject({ code: Code.Canceled });
    expect(isRetryable(err, true)).toBe(true);
  });

  it('reports an INTERNAL_ERROR reset as INTERNAL (retried when idempotent), not as an unreachable peer', async () => {
    const url = await serve((stream) => {
      stream.respond(GRPC_OK_HEADERS);
      setTimeout(() => stream.destroy(new Error('handler failed')), 20); // RST_STREAM INTERNAL_ERROR
    });
    const err = await failureOf(url);
    expect(err).toMatchObject({ code: Code.Internal });
    expect(err?.message).toMatch(/reset the stream \(HTTP\/2 error 2\)/);
    expect(isRetryable(err, true)).toBe(true);
    expect(isRetryable(err, false)).toBe(false);
  });

  it('refuses an answer that is not gRPC (an HTML page) as UNKNOWN naming the content type', async () => {
    const url = await serve((stream) => {
      stream.respond({ ':status': 200, 'content-type': 'text/html' });
      stream.end('<!DOCTYPE html><html></html>');
    });
    const err = await failureOf(url);
    expect(err).toMatchObject({ code: Code.Unknown });
    expect(err?.message).toMatch(/text\/html/);
  });

  it('sends a user-agent naming the SDK', async () => {
    let agent: string | undefined;
    const url = await serve((stream, headers) => {
      agent = headers['user-agent'];
      stream.respond({ ...GRPC_OK_HEADERS, 'grpc-status': '5' }, { endStream: true });
    });
    expect(await failureOf(url)).toMatchObject({ code: Code.NotFound });
    expect(agent).toBe('haystack-sdk');
  });

  it("keeps the process alive for a call on a new connection while a GOAWAY'd one finishes its call", async () => {
    // Call A is answered 300 ms after its connection got a GOAWAY; call B, made after
    // the GOAWAY (again, if it was refused on the old connection), opens a second
    // connection and is answered at 1 s. If that connection
    // were not holding the event loop open, the script would end once A finished.
    let calls = 0;
    const url = await serve((stream) => {
      const first = calls++ === 0;
      if (first) stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, stream.id);
      setTimeout(
        () => {
          if (!stream.destroyed)
            stream.respond({ ...GRPC_OK_HEADERS, 'grpc-status': first ? '5' : '7' }, { endStream: true });
        },
        first ? 300 : 1000,
      );
    });
    const script = path.join(os.tmpdir(), `sdk-goaway-${process.pid}.mts`);
    writeFileSync(
      script,
      `import { createClient } from '${ROOT}/node_modules/@connectrpc/connect/dist/esm/index.js';
import { Health } from '${ROOT}/gen/grpc/health/v1/health_pb.ts';
import { grpcTransport } from '${ROOT}/internal/sdk/index.ts';
const client = createClient(Health, grpcTransport(${JSON.stringify(url)}));
const a = client.check({}).catch((e) => e.code);
await new Promise((r) => setTimeout(r, 100));
// Under heavy load the GOAWAY can reach the client after B was sent on the old
// connection; the server then refuses B's stream (UNAVAILABLE) and B is sent again.
const b = client.check({}).catch((e) => (e.code === 14 ? client.check({}) : Promise.reject(e))).catch((e) => e.code);
console.log('A', await a);
console.log('B', await b);
`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let errText = '';
    child.stdout.on('data', (d) => (out += String(d)));
    child.stderr.on('data', (d) => (errText += String(d)));
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    expect({ code, out, errText }).toMatchObject({ code: 0, out: 'A 5\nB 7\n' });
  }, 30_000);

  it('cancels a download whose reader stopped early (break), instead of leaving it open', async () => {
    const frame = (m: Parameters<typeof create<typeof DownloadResponseSchema>>[1]) =>
      frameMessage(toBinary(DownloadResponseSchema, create(DownloadResponseSchema, m)));
    let closedWith: number | undefined;
    const url = await serve((stream) => {
      stream.on('close', () => {
        closedWith = stream.rstCode;
      });
      stream.respond(GRPC_OK_HEADERS);
      const info = create(BlobInfoSchema, { blobId: 'b', size: 1_000_000n, sha256: 'a'.repeat(64) });
      stream.write(frame({ msg: { case: 'info', value: info } }));
      // Ten chunks of a million-byte blob, then nothing: only a cancel ends this call.
      for (let i = 0; i < 10; i++)
        stream.write(frame({ msg: { case: 'chunk', value: new Uint8Array(1000) } }));
    });
    const c = new HaystackClient({ url, retries: 0 });
    try {
      const d = await c.downloadStream('b');
      for await (const _ of d.chunks) break;
      await vi.waitFor(() => expect(closedWith).toBe(http2.constants.NGHTTP2_CANCEL), { timeout: 5000 });
    } finally {
      await c.close();
    }
  });
});
