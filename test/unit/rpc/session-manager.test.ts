import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuardedHttp2SessionManager } from '../../../internal/rpc/session-manager.js';

// connect-es#1795: connect-node's keepalive timer may ping a session destroyed a
// tick earlier; Node's ping throws ERR_HTTP2_INVALID_SESSION synchronously and the
// process dies. The guarded manager's sessions answer such a ping through its callback.
describe('GuardedHttp2SessionManager', () => {
  let server: http2.Http2Server;
  let url: string;
  beforeAll(async () => {
    server = http2.createServer((_req, res) => res.end('ok'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('a ping on a session destroyed under it calls back with an error instead of throwing', async () => {
    const manager = new GuardedHttp2SessionManager(url, { pingIntervalMs: 60_000 });
    const stream = await manager.request('GET', '/', {}, {});
    stream.resume();
    const session = stream.session;
    expect(session).toBeDefined();
    if (!session) return;
    // An unguarded session throws here: the behaviour the guard exists for.
    const bare = http2.connect(url);
    bare.on('error', () => {});
    bare.destroy();
    expect(() => bare.ping(() => {})).toThrow(/destroyed/);

    session.destroy();
    const err = await new Promise<Error | null>((resolve) => {
      session.ping((e) => resolve(e));
    });
    expect(err).toBeInstanceOf(Error);
    expect((err as Error & { code?: string }).code).toBe('ERR_HTTP2_INVALID_SESSION');
    manager.abort();
  });
});
