import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Health } from '../../../gen/grpc/health/v1/health_pb.js';
import { grpcTransport } from '../../../internal/sdk/index.js';

// Node starts an HTTP/2 session with 64 KiB windows for the connection and each
// stream: 16 concurrent 64 KiB downloads through one SDK connection would share
// 64 KiB per round trip. The SDK's sessions announce wide windows and large frames.
describe("the SDK's HTTP/2 sessions", () => {
  let server: http2.Http2Server;
  let url: string;
  const announced: http2.Settings[] = [];
  const sessions: http2.ServerHttp2Session[] = [];
  const paths: string[] = [];
  beforeAll(async () => {
    server = http2.createServer();
    server.on('stream', (stream, headers) => {
      paths.push(String(headers[':path']));
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12' },
        { endStream: true },
      );
    });
    server.on('session', (s) => {
      sessions.push(s);
      s.on('remoteSettings', (settings) => announced.push(settings));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('announce a 4 MiB stream window and 1 MiB frames, and open a 64 MiB connection window', async () => {
    const transport = grpcTransport(url);
    try {
      // The server answers UNIMPLEMENTED; the session and its settings are what is checked.
      await expect(createClient(Health, transport).check({})).rejects.toMatchObject({ code: 12 });
      expect(announced.at(-1)).toMatchObject({ initialWindowSize: 4 * 1024 * 1024, maxFrameSize: 1 << 20 });
      // The server's view of how much it may send on the connection (the WINDOW_UPDATE
      // follows the server's SETTINGS ack, so it may land after the first call).
      await vi.waitFor(
        () => expect(sessions.at(-1)?.state.remoteWindowSize).toBeGreaterThanOrEqual(64 * 1024 * 1024 - 1024),
        { timeout: 5000 },
      );
    } finally {
      transport.close();
    }
  });

  it('put a path in the URL before every call path', async () => {
    const transport = grpcTransport(`${url}/api/`);
    try {
      await expect(createClient(Health, transport).check({})).rejects.toMatchObject({ code: 12 });
      expect(paths.at(-1)).toBe('/api/grpc.health.v1.Health/Check');
    } finally {
      transport.close();
    }
  });
});
