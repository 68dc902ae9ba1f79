import { spawn } from 'node:child_process';
import { once } from 'node:events';
import http2 from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryService } from '../../../gen/haystack/v1/directory_pb.js';
import { StoreService } from '../../../gen/haystack/v1/store_pb.js';
import { createDirectGrpcTransport } from '../../../internal/rpc/direct-transport.js';
import { peerCallError } from '../../../internal/rpc/errors.js';
import { peerTransport } from '../../../internal/rpc/transport.js';
import { unreachableCode } from '../../../internal/sdk/unreachable.js';

/** What connect-node makes of a Node error under a call: its code, the Node error as cause. */
function fromNode(code: string, message: string, as: Code): ConnectError {
  const node = Object.assign(new Error(message), { code });
  const ce = ConnectError.from(node, as);
  ce.cause = node;
  return ce;
}

// N4 (docs/faults.md): a follower directory forwarding a Delete to a leader behind a
// network cut got `connect EINVAL` (a blackhole route), which connect-node passes
// through as INTERNAL — not retried by the SDK. Unreachable must read UNAVAILABLE.
describe('peerCallError', () => {
  it('turns a connection the transport could not make into UNAVAILABLE naming the peer', () => {
    const err = peerCallError(
      fromNode('EINVAL', 'connect EINVAL 10.77.1.13:9000', Code.Internal),
      'directory at 10.77.1.13:9000',
    );
    expect(err).toBeInstanceOf(ConnectError);
    const ce = err as ConnectError;
    expect(ce.code).toBe(Code.Unavailable);
    expect(ce.rawMessage).toContain('directory at 10.77.1.13:9000 unreachable (EINVAL)');
    expect(ce.rawMessage).toContain('connect EINVAL 10.77.1.13:9000');
  });

  it('maps a reset connection (ABORTED from connect-node) and HTTP/2 session errors too', () => {
    for (const [code, as] of [
      ['ECONNRESET', Code.Aborted],
      ['EHOSTUNREACH', Code.Internal],
      ['ERR_HTTP2_STREAM_ERROR', Code.Internal],
      ['ERR_HTTP2_GOAWAY_SESSION', Code.Unknown],
    ] as const) {
      const ce = peerCallError(fromNode(code, `${code} happened`, as), 'store at s:1') as ConnectError;
      expect(ce.code, code).toBe(Code.Unavailable);
      expect(ce.rawMessage).toContain(`store at s:1 unreachable (${code})`);
    }
    const destroyed = new ConnectError('expected open session, but it is destroyed', Code.Internal);
    expect((peerCallError(destroyed, 'p') as ConnectError).code).toBe(Code.Unavailable);
  });

  it('leaves answers from the peer, deadlines, cancels and other local errors alone', () => {
    const answered = new ConnectError('disk on fire', Code.Internal);
    expect(peerCallError(answered, 'p')).toBe(answered);
    const deadline = fromNode('ETIMEDOUT', 'timed out', Code.DeadlineExceeded);
    expect(peerCallError(deadline, 'p')).toBe(deadline);
    const tls = fromNode('ERR_TLS_CERT_ALTNAME_INVALID', 'bad cert', Code.Internal);
    expect(peerCallError(tls, 'p')).toBe(tls);
    expect(unreachableCode(new Error('plain'))).toBeUndefined();
  });
});

// Real sockets: a server that resets every connection, and one that answers INTERNAL.
describe('internal clients across a peer that cannot be reached', () => {
  let resetter: net.Server;
  let answering: http2.Http2Server;
  let resetAddress: string;
  let answerAddress: string;
  const sessions: http2.ServerHttp2Session[] = [];
  beforeAll(async () => {
    resetter = net.createServer((s) => s.resetAndDestroy());
    await new Promise<void>((r) => resetter.listen(0, '127.0.0.1', r));
    resetAddress = `127.0.0.1:${(resetter.address() as AddressInfo).port}`;
    answering = http2.createServer();
    // The clients keep their sessions open: close them with the server.
    answering.on('session', (s) => sessions.push(s));
    answering.on('stream', (stream) => {
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '13', 'grpc-message': 'boom' },
        { endStream: true },
      );
    });
    await new Promise<void>((r) => answering.listen(0, '127.0.0.1', r));
    answerAddress = `127.0.0.1:${(answering.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((r) => resetter.close(() => r()));
    for (const s of sessions) s.destroy();
    await new Promise<void>((r) => answering.close(() => r()));
  });

  const plaintext = { mode: 'plaintext' } as const;
  const directory = (address: string) =>
    createClient(DirectoryService, peerTransport(address, ['directory'], {}, plaintext));
  const store = (address: string) =>
    createClient(StoreService, createDirectGrpcTransport({ address, security: plaintext }));

  it('a directory call (connect-node transport) fails UNAVAILABLE naming the directory', async () => {
    const err = await directory(resetAddress)
      .delete({ blobId: 'b' }, { timeoutMs: 5000 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect((err as ConnectError).rawMessage).toContain(`directory at ${resetAddress} unreachable`);
  });

  it('a store call (direct transport) fails UNAVAILABLE naming the store', async () => {
    const err = await store(resetAddress)
      .stat({}, { timeoutMs: 5000 })
      .catch((e: unknown) => e);
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect((err as ConnectError).rawMessage).toContain(`store at ${resetAddress} unreachable`);
  });

  it("a peer's own INTERNAL answer stays INTERNAL on both transports", async () => {
    for (const call of [
      () => directory(answerAddress).delete({ blobId: 'b' }, { timeoutMs: 5000 }),
      () => store(answerAddress).stat({}, { timeoutMs: 5000 }),
    ]) {
      const err = await call().catch((e: unknown) => e);
      expect((err as ConnectError).code).toBe(Code.Internal);
      expect((err as ConnectError).rawMessage).toBe('boom');
    }
  });
});

// The direct transport's keepalive gave up on a hung store with a bare Error, which
// left a gateway as INTERNAL (the netns majority/minority split: "keepalive ping not
// answered"). A store paused with SIGSTOP: the next call fails UNAVAILABLE naming it.
describe('the direct transport across a hung peer', () => {
  it('fails a call UNAVAILABLE naming the store once its keepalive ping goes unanswered', async () => {
    const server = spawn(
      process.execPath,
      [
        '-e',
        `const h = require('node:http2').createServer();
         h.on('stream', (s) => s.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5' }, { endStream: true }));
         h.listen(0, '127.0.0.1', () => console.log(h.address().port));`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      const [chunk] = (await once(server.stdout, 'data')) as [Buffer];
      const address = `127.0.0.1:${chunk.toString().trim()}`;
      const client = createClient(
        StoreService,
        createDirectGrpcTransport({ address, security: { mode: 'plaintext' }, pingIntervalMs: 200 }),
      );
      // The session is up and the peer answers (NOT_FOUND from the fake).
      const first = await client.stat({}, { timeoutMs: 5000 }).catch((e: unknown) => e);
      expect((first as ConnectError).code).toBe(Code.NotFound);
      server.kill('SIGSTOP');
      const err = await client.stat({}, { timeoutMs: 10_000 }).catch((e: unknown) => e);
      expect((err as ConnectError).code).toBe(Code.Unavailable);
      expect((err as ConnectError).rawMessage).toContain(`store at ${address} unreachable: keepalive ping`);
    } finally {
      server.kill('SIGKILL');
    }
  });
});
