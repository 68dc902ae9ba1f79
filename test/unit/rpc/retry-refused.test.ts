import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { afterEach, describe, expect, it } from 'vitest';
import { DirectoryService } from '../../../gen/haystack/v1/directory_pb.js';
import { isRefusedStream } from '../../../internal/rpc/retry-refused.js';
import { peerTransport } from '../../../internal/rpc/transport.js';

// The netns checker's listPlacementGroup failed with NGHTTP2_REFUSED_STREAM and
// stopped a full run (docs/faults.md): a refused stream was never processed
// (RFC 9113 §8.7), so the transport retries a unary call on it once.
describe('a unary call whose stream the peer refused', () => {
  let server: http2.Http2Server | undefined;
  const sessions: http2.ServerHttp2Session[] = [];
  afterEach(async () => {
    for (const s of sessions.splice(0)) s.destroy();
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  });

  /** A server that refuses the first `refuse` streams, then answers NOT_FOUND "answered". */
  async function serve(refuse: number): Promise<{ address: string; streams: () => number }> {
    let streams = 0;
    server = http2.createServer();
    server.on('session', (s) => sessions.push(s));
    server.on('stream', (stream) => {
      streams++;
      // The server side of a refused stream reports the reset too.
      stream.on('error', () => {});
      if (streams <= refuse) {
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
        return;
      }
      stream.respond(
        {
          ':status': 200,
          'content-type': 'application/grpc',
          'grpc-status': '5',
          'grpc-message': 'answered',
        },
        { endStream: true },
      );
    });
    await new Promise<void>((r) => server?.listen(0, '127.0.0.1', r));
    const address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    return { address, streams: () => streams };
  }

  const directory = (address: string) =>
    createClient(DirectoryService, peerTransport(address, ['directory'], {}, { mode: 'plaintext' }));

  it('is retried once and gets the answer', async () => {
    const { address, streams } = await serve(1);
    const err = await directory(address)
      .delete({ blobId: 'b' }, { timeoutMs: 5000 })
      .catch((e: unknown) => e);
    expect((err as ConnectError).code).toBe(Code.NotFound);
    expect((err as ConnectError).rawMessage).toBe('answered');
    expect(streams()).toBe(2);
  });

  it('is not retried when the peer answered, even with a message naming a refused stream', async () => {
    server = http2.createServer();
    let streams = 0;
    server.on('session', (s) => sessions.push(s));
    server.on('stream', (stream) => {
      streams++;
      stream.respond(
        {
          ':status': 200,
          'content-type': 'application/grpc',
          'grpc-status': '14',
          'grpc-message': 'http/2 stream closed with error code REFUSED_STREAM (0x7)',
        },
        { endStream: true },
      );
    });
    await new Promise<void>((r) => server?.listen(0, '127.0.0.1', r));
    const address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    const err = await directory(address)
      .delete({ blobId: 'b' }, { timeoutMs: 5000 })
      .catch((e: unknown) => e);
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect(streams).toBe(1);
  });

  it('is retried only once: refused twice, it fails UNAVAILABLE naming the peer', async () => {
    const { address, streams } = await serve(2);
    const err = await directory(address)
      .delete({ blobId: 'b' }, { timeoutMs: 5000 })
      .catch((e: unknown) => e);
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect((err as ConnectError).rawMessage).toContain(`directory at ${address}`);
    expect(isRefusedStream(err)).toBe(true);
    expect(streams()).toBe(2);
  });
});

describe('isRefusedStream', () => {
  it("finds Node's and connect-node's wording anywhere in the cause chain, and nothing else", () => {
    const node = Object.assign(new Error('Stream closed with error code NGHTTP2_REFUSED_STREAM'), {
      code: 'ERR_HTTP2_STREAM_ERROR',
    });
    expect(isRefusedStream(new ConnectError('wrapped', Code.Internal, undefined, undefined, node))).toBe(
      true,
    );
    expect(
      isRefusedStream(new ConnectError('http/2 stream closed with error code REFUSED_STREAM (0x7)', 14)),
    ).toBe(true);
    const cancelled = Object.assign(new Error('Stream closed with error code NGHTTP2_CANCEL'), {
      code: 'ERR_HTTP2_STREAM_ERROR',
    });
    expect(isRefusedStream(cancelled)).toBe(false);
    expect(isRefusedStream('REFUSED_STREAM')).toBe(false);
    // A peer's answer quoting a refused stream elsewhere: that call was processed.
    expect(
      isRefusedStream(
        new ConnectError('forward failed: http/2 stream closed with error code REFUSED_STREAM (0x7)', 14),
      ),
    ).toBe(false);
  });
});
