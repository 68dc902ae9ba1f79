import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { grpcTransport } from '../../../internal/sdk/index.js';

// Node starts an HTTP/2 session with 64 KiB windows for the connection and each
// stream: 16 concurrent 64 KiB downloads through one SDK connection would share
// 64 KiB per round trip. The SDK's sessions announce wide windows and large frames.
describe("the SDK's HTTP/2 sessions", () => {
  let server: http2.Http2Server;
  let url: string;
  const announced: http2.Settings[] = [];
  beforeAll(async () => {
    server = http2.createServer((_req, res) => res.end('ok'));
    server.on('session', (s) => s.on('remoteSettings', (settings) => announced.push(settings)));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('announce a 4 MiB stream window and 1 MiB frames, and open a 64 MiB connection window', async () => {
    const transport = grpcTransport(url);
    try {
      const stream = await transport.session.request('GET', '/', {}, {});
      stream.resume();
      stream.on('error', () => {}); // the abort below ends the session with an error
      await new Promise((r) => stream.on('end', r));
      expect(announced.at(-1)).toMatchObject({ initialWindowSize: 4 * 1024 * 1024, maxFrameSize: 1 << 20 });
      expect(stream.session?.state.localWindowSize).toBeGreaterThanOrEqual(64 * 1024 * 1024 - 1024);
    } finally {
      transport.session.abort();
    }
  });
});
