import { createHash } from 'node:crypto';
import http2 from 'node:http2';
import { create, toBinary } from '@bufbuild/protobuf';
import {
  type Client,
  Code,
  ConnectError,
  createClient,
  createServiceImplSpec,
  type ServiceImpl,
  type Transport,
} from '@connectrpc/connect';
import { createGrpcWebTransport } from '@connectrpc/connect-node';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryService } from '../../gen/haystack/v1/directory_pb.js';
import {
  ReadResponseSchema,
  StoreService,
  type WriteRequest,
  WriteRequestSchema,
} from '../../gen/haystack/v1/store_pb.js';
import { sleep } from '../../internal/common/sleep.js';
import { createDirectGrpcTransport } from '../../internal/rpc/direct-transport.js';
import { AsyncPipe } from '../../internal/rpc/pipe.js';
import { peerTransport } from '../../internal/rpc/transport.js';
import type { Identity } from '../../internal/security/identity.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { DEFAULT_LISTENER_LIMITS } from '../../internal/server/listener-limits.js';
import { createLogger } from '../../internal/server/logger.js';
import { type RunningServer, startServer } from '../../internal/server/server.js';
import { httpsGet, securityOf } from '../helpers/pki.js';
import { grpcurl } from '../helpers/tools.js';

/**
 * The direct gRPC path (internal/server/direct-grpc.ts) and transport
 * (internal/rpc/direct-transport.ts) against the reference stacks: connect-node,
 * @grpc/grpc-js and grpcurl, over real HTTP/2 sockets.
 */

const cancelled: string[] = [];
const writeEndings: string[] = [];
/** Messages the recording Write handler has received in the current call. */
let writeReceived = 0;

/** A StoreService whose behaviour is chosen by the blob id. */
const store: ServiceImpl<typeof StoreService> = {
  stat: () => Promise.reject(new ConnectError('not in this fake', Code.Unimplemented)),
  listPlacementGroup: () => Promise.reject(new ConnectError('not in this fake', Code.Unimplemented)),
  getPlacementDigests: () => Promise.reject(new ConnectError('not in this fake', Code.Unimplemented)),
  writeShard: () => Promise.reject(new ConnectError('not in this fake', Code.Unimplemented)),
  deleteShard: () => Promise.reject(new ConnectError('not in this fake', Code.Unimplemented)),
  rewrapKeys: () => Promise.reject(new ConnectError('not in this fake', Code.Unimplemented)),
  listShards: () => Promise.reject(new ConnectError('not in this fake', Code.Unimplemented)),
  readShard: () => {
    throw new ConnectError('not in this fake', Code.Unimplemented);
  },
  forwardWrites: () => {
    throw new ConnectError('not in this fake', Code.Unimplemented);
  },
  async write(reqs, ctx) {
    let blobId = '';
    let size = 0n;
    const sha = createHash('sha256');
    if (ctx.requestHeader.get('x-record') === 'yes') {
      // Records how the request stream ended, as a handler that commits on a clean end sees it.
      try {
        for await (const _ of reqs) writeReceived++;
        writeEndings.push('clean end');
      } catch (err) {
        writeEndings.push(`failed: ${Code[ConnectError.from(err).code]}`);
      }
      throw new ConnectError('recorded', Code.Aborted);
    }
    for await (const r of reqs) {
      if (r.msg.case === 'header') {
        blobId = r.msg.value.blobId;
        if (blobId === 'refuse') {
          ctx.responseTrailer.set('x-why', 'refused on purpose');
          throw new ConnectError('blob "refuse" already exists — naïve 100%', Code.AlreadyExists);
        }
        if (blobId === 'relay') {
          // A peer's refusal passed on under another code, its trailers as metadata
          // (as the gateway's staleTermAsUnavailable does with a store's).
          const peer = new Headers({
            'grpc-status': String(Code.FailedPrecondition),
            'grpc-message': 'directory term 12 is older than term 13 already seen',
            'haystack-fenced-term': '13',
          });
          throw new ConnectError('the view catches up: retry', Code.Unavailable, peer);
        }
      } else if (r.msg.case === 'chunk') {
        size += BigInt(r.msg.value.length);
        sha.update(r.msg.value);
        // A slow disk: the client must be held back by flow control, not buffered.
        if (blobId === 'slow') await sleep(1);
      }
    }
    return { blobId, size, sha256: sha.digest() };
  },
  async *read(req, ctx) {
    if (req.blobId === 'missing') throw new ConnectError(`blob ${req.blobId} not found`, Code.NotFound);
    if (req.blobId === 'hang') {
      yield { msg: { case: 'header', value: { size: 0n } } };
      await new Promise<void>((resolve) => ctx.signal.addEventListener('abort', () => resolve()));
      cancelled.push(`${req.blobId}:${ConnectError.from(ctx.signal.reason).code}`);
      return;
    }
    const chunks = Number(req.length);
    yield { msg: { case: 'header', value: { size: BigInt(chunks * 65536) } } };
    for (let i = 0; i < chunks; i++) {
      if (ctx.signal.aborted) {
        cancelled.push(`${req.blobId}:stopped`);
        return;
      }
      yield { msg: { case: 'chunk', value: new Uint8Array(65536).fill(i & 0xff) } };
    }
  },
  async delete() {
    throw new ConnectError('plain Error below', Code.Internal);
  },
  async replicate() {
    throw new Error('not a ConnectError');
  },
  async compact() {
    return { compactions: [] };
  },
  async scrub() {
    return { needlesChecked: 0n, bytesChecked: 0n, corrupt: [] };
  },
  async getStats(_req, ctx) {
    ctx.responseHeader.set('x-seen', ctx.requestHeader.get('x-test') ?? 'none');
    ctx.responseTrailer.set('x-trailer', 'yes');
    const timeout = ctx.timeoutMs();
    if (ctx.requestHeader.get('x-test') === 'sleep') await sleep(2000, ctx.signal).catch(() => {});
    return { storeId: 'fake', capacityBytes: BigInt(timeout === undefined ? 0 : Math.round(timeout)) };
  },
  async listNeedles() {
    return { needles: [], nextPageToken: '' };
  },
};

/** Heartbeat (bidi) echoes each request's free bytes as the term. */
const directory: Partial<ServiceImpl<typeof DirectoryService>> = {
  async *heartbeat(reqs) {
    for await (const r of reqs) yield { term: r.freeBytes };
  },
};

let server: RunningServer;
let plain: RunningServer;
/** The direct path with a short request idle limit (LISTEN_REQUEST_IDLE_TIMEOUT). */
let idle: RunningServer;
const IDLE_MS = 500;
let address: string;
/** The test's identities: a gateway (Write, Read, GetStats), the manager (Delete, Replicate), a store (Heartbeat). */
let asGateway: TransportSecurity;
let asManager: TransportSecurity;
let asStore: TransportSecurity;

type Tls = Extract<TransportSecurity, { mode: 'mtls' }>;

beforeAll(async () => {
  const log = createLogger('test', 'direct', 'silent');
  const security = await securityOf({ role: 'store', id: 'direct' });
  asGateway = await securityOf({ role: 'gateway', id: 'g' });
  asManager = await securityOf({ role: 'replication', id: 'm' });
  asStore = await securityOf({ role: 'store', id: 's' } satisfies Identity);
  server = await startServer({
    security,
    component: 'test',
    instance: 'direct',
    listen: '127.0.0.1:0',
    log,
    shutdownGraceMs: 1000,
    services: [
      {
        desc: StoreService,
        register: (r) => r.service(StoreService, store),
        direct: createServiceImplSpec<typeof StoreService>(StoreService, store),
      },
      {
        desc: DirectoryService,
        register: (r) => r.service(DirectoryService, directory),
        direct: createServiceImplSpec<typeof DirectoryService>(DirectoryService, directory),
      },
    ],
  });
  // The same service without the direct path: the direct transport must talk to connect-node too.
  plain = await startServer({
    security,
    component: 'test',
    instance: 'plain',
    listen: '127.0.0.1:0',
    log,
    shutdownGraceMs: 1000,
    services: [{ desc: StoreService, register: (r) => r.service(StoreService, store) }],
  });
  idle = await startServer({
    security,
    component: 'test',
    instance: 'idle',
    listen: '127.0.0.1:0',
    log,
    shutdownGraceMs: 1000,
    limits: { ...DEFAULT_LISTENER_LIMITS, requestIdleMs: IDLE_MS },
    services: [
      {
        desc: StoreService,
        register: (r) => r.service(StoreService, store),
        direct: createServiceImplSpec<typeof StoreService>(StoreService, store),
      },
    ],
  });
  address = `127.0.0.1:${server.port}`;
});

afterAll(async () => {
  await Promise.all([server?.close(), plain?.close(), idle?.close()]);
});

/** Clients over mTLS, made as a gateway unless told otherwise. */
type Make = (as?: TransportSecurity) => Client<typeof StoreService>;

function clients(addr: () => string): Array<[string, Make]> {
  const make =
    (t: (as: TransportSecurity) => Transport): Make =>
    (as = asGateway) =>
      createClient(StoreService, t(as));
  return [
    ['direct transport', make((as) => createDirectGrpcTransport({ address: addr(), security: as }))],
    ['connect-node gRPC', make((as) => peerTransport(addr(), ['store'], {}, as))],
    [
      'connect-node gRPC-Web over HTTP/1.1 TLS (falls back to connect-node)',
      make((as) =>
        createGrpcWebTransport({
          baseUrl: `https://${addr()}`,
          httpVersion: '1.1',
          nodeOptions: {
            ca: (as as Tls).ca,
            cert: (as as Tls).cert,
            key: (as as Tls).key,
            checkServerIdentity: () => undefined,
          },
        }),
      ),
    ],
  ];
}

async function* upload(blobId: string, chunks: number, chunkSize = 65536) {
  yield create(WriteRequestSchema, { msg: { case: 'header', value: { blobId } } });
  for (let i = 0; i < chunks; i++) {
    yield create(WriteRequestSchema, {
      msg: { case: 'chunk', value: new Uint8Array(chunkSize).fill(i & 0xff) },
    });
  }
}

function expectedSha(chunks: number, chunkSize = 65536): string {
  const h = createHash('sha256');
  for (let i = 0; i < chunks; i++) h.update(new Uint8Array(chunkSize).fill(i & 0xff));
  return h.digest('hex');
}

async function codeOf(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error('the call succeeded');
}

for (const [server, addr] of [
  ['direct path', () => address],
  ['connect-node server', () => `127.0.0.1:${plain.port}`],
] as const) {
  describe.each(clients(addr))(`${server}, client: %s`, (_name, make) => {
    it('client-streams 16 MiB through flow control and gets the digest back', async () => {
      const res = await make().write(upload('slow', 256));
      expect(res.size).toBe(256n * 65536n);
      expect(Buffer.from(res.sha256).toString('hex')).toBe(expectedSha(256));
    });

    it('server-streams every chunk in order', async () => {
      let i = 0;
      let header = false;
      for await (const m of make().read({ blobId: 'x', length: 40n })) {
        if (m.msg.case === 'header') header = true;
        else if (m.msg.case === 'chunk') {
          expect(m.msg.value.length).toBe(65536);
          expect(m.msg.value[100]).toBe(i & 0xff);
          i++;
        }
      }
      expect(header).toBe(true);
      expect(i).toBe(40);
    });

    it('carries status codes, percent-encoded messages and trailers', async () => {
      const c = make();
      const refused = await codeOf(c.write(upload('refuse', 1)));
      expect(refused.code).toBe(Code.AlreadyExists);
      expect(refused.rawMessage).toBe('blob "refuse" already exists — naïve 100%');
      expect(refused.metadata.get('x-why')).toBe('refused on purpose');
      // N5: this call's status, not the peer's the error's metadata carries; its other keys kept.
      const relayed = await codeOf(c.write(upload('relay', 1)));
      expect([Code[relayed.code], relayed.rawMessage]).toEqual(['Unavailable', 'the view catches up: retry']);
      expect(relayed.metadata.get('haystack-fenced-term')).toBe('13');
      const missing = await codeOf(
        (async () => {
          for await (const _ of c.read({ blobId: 'missing' }));
        })(),
      );
      expect(missing.code).toBe(Code.NotFound);
      expect(missing.rawMessage).toBe('blob missing not found');
      const m = make(asManager);
      expect((await codeOf(m.delete({ blobId: 'a' }))).code).toBe(Code.Internal);
      // A plain Error thrown by a handler is INTERNAL in connect-node, and so here.
      expect((await codeOf(m.replicate({ blobId: 'a' }))).code).toBe(Code.Internal);
      // The role table holds on this path too: a store may not delete on another store.
      expect((await codeOf(make(asStore).delete({ blobId: 'a' }))).code).toBe(Code.PermissionDenied);
    });

    it('passes request headers, response headers and trailers, and the deadline', async () => {
      let header: Headers | undefined;
      let trailer: Headers | undefined;
      const res = await make().getStats(
        {},
        {
          headers: { 'x-test': 'hello' },
          timeoutMs: 5000,
          onHeader: (h) => {
            header = h;
          },
          onTrailer: (t) => {
            trailer = t;
          },
        },
      );
      expect(res.storeId).toBe('fake');
      expect(Number(res.capacityBytes)).toBeGreaterThan(4000);
      expect(Number(res.capacityBytes)).toBeLessThanOrEqual(5000);
      expect(header?.get('x-seen')).toBe('hello');
      expect(trailer?.get('x-trailer')).toBe('yes');
    });

    it('ends a call past its deadline with DEADLINE_EXCEEDED', async () => {
      const err = await codeOf(make().getStats({}, { headers: { 'x-test': 'sleep' }, timeoutMs: 150 }));
      expect(err.code).toBe(Code.DeadlineExceeded);
    });
  });
}

describe('direct path specifics', () => {
  it('a client that stops reading cancels the server stream', async () => {
    const c = createClient(StoreService, createDirectGrpcTransport({ address, security: asGateway }));
    cancelled.length = 0;
    const ac = new AbortController();
    const err = await codeOf(
      (async () => {
        for await (const m of c.read({ blobId: 'hang' }, { signal: ac.signal })) {
          if (m.msg.case === 'header') ac.abort();
        }
      })(),
    );
    expect(err.code).toBe(Code.Canceled);
    await expect.poll(() => cancelled).toContain('hang:1'); // Code.Canceled on the server side
  });

  it('bidi-streams: every request answered in order', async () => {
    const c = createClient(
      DirectoryService,
      createDirectGrpcTransport({ address, security: asStore, serverRoles: ['store'] }),
    );
    async function* beats() {
      for (let i = 1; i <= 50; i++) yield { storeId: 's', freeBytes: BigInt(i) };
    }
    const terms: bigint[] = [];
    for await (const r of c.heartbeat(beats())) terms.push(r.term);
    expect(terms).toEqual(Array.from({ length: 50 }, (_, i) => BigInt(i + 1)));
  });

  it('answers grpc-js (the reference gRPC stack) streaming calls', async () => {
    const t = asGateway as Tls;
    const client = new grpc.Client(
      address,
      grpc.credentials.createSsl(Buffer.from(t.ca), Buffer.from(t.key), Buffer.from(t.cert)),
    );
    const chunks: number[] = [];
    await new Promise<void>((resolve, reject) => {
      const call = client.makeServerStreamRequest(
        '/haystack.v1.StoreService/Read',
        (m: Uint8Array) => Buffer.from(m),
        (b: Buffer) => b,
        Buffer.from(
          toBinary(
            StoreService.method.read.input,
            create(StoreService.method.read.input, { blobId: 'g', length: 3n }),
          ),
        ),
      );
      call.on('data', (b: Buffer) => chunks.push(b.length));
      call.on('error', reject);
      call.on('end', resolve);
    });
    client.close();
    // The header message, then three 64 KiB chunk messages.
    expect(chunks.length).toBe(4);
    expect(chunks.slice(1).every((n) => n > 65536)).toBe(true);
    const header = toBinary(
      ReadResponseSchema,
      create(ReadResponseSchema, { msg: { case: 'header', value: { size: 3n * 65536n } } }),
    );
    expect(chunks[0]).toBe(header.length);
  });

  it('answers the real grpcurl, errors included', async () => {
    const missing = await grpcurl(['-d', '{"blobId":"missing"}', address, 'haystack.v1.StoreService/Read']);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain('NotFound');
    expect(missing.stderr).toContain('blob missing not found');
  });

  it('a request that does not unmarshal is INVALID_ARGUMENT in trailers after headers, and the server keeps serving', async () => {
    const t = asGateway as Tls;
    const session = http2.connect(`https://${address}`, {
      ca: t.ca,
      cert: t.cert,
      key: t.key,
      checkServerIdentity: () => undefined,
    });
    const result = await new Promise<{
      headers: http2.IncomingHttpHeaders;
      trailers: http2.IncomingHttpHeaders;
    }>((resolve, reject) => {
      const req = session.request({
        ':method': 'POST',
        ':path': '/haystack.v1.StoreService/GetStats',
        'content-type': 'application/grpc',
        te: 'trailers',
      });
      let headers: http2.IncomingHttpHeaders = {};
      req.on('response', (h) => {
        headers = h;
      });
      req.on('trailers', (trailers) => resolve({ headers, trailers }));
      req.on('error', reject);
      req.on('data', () => {});
      req.end(Buffer.from([0, 0, 0, 0, 3, 0xff, 0xff, 0xff]));
    });
    session.close();
    expect(result.headers[':status']).toBe(200);
    expect(result.headers['grpc-status']).toBeUndefined();
    expect(result.trailers['grpc-status']).toBe('3');
    expect(String(result.trailers['grpc-message'])).toContain('cannot decode the request message');
    const c = createClient(StoreService, createDirectGrpcTransport({ address, security: asGateway }));
    expect((await c.getStats({})).storeId).toBe('fake');
  });

  it.each([
    // connect-node reports the reset as UNKNOWN; what matters is that it is no complete request.
    ['direct path', () => address, 'failed: Canceled'],
    ['connect-node server', () => `127.0.0.1:${plain.port}`, 'failed: Unknown'],
  ])(
    'a client-streamed call whose request stream fails after its last message is cancelled, never a complete request (%s)',
    async (_name, addr, ending) => {
      // Node's stream.close(CANCEL) half-closes first (END_STREAM, a complete
      // request on the wire); a store must never commit a forwarded upload its
      // sender refused after the last byte.
      const c = createClient(
        StoreService,
        createDirectGrpcTransport({ address: addr(), security: asGateway }),
      );
      for (let round = 0; round < 5; round++) {
        writeEndings.length = 0;
        writeReceived = 0;
        const pipe = new AsyncPipe<WriteRequest>();
        const call = codeOf(c.write(pipe, { headers: { 'x-record': 'yes' } }));
        await pipe.push(create(WriteRequestSchema, { msg: { case: 'header', value: { blobId: 'reset' } } }));
        await pipe.push(create(WriteRequestSchema, { msg: { case: 'chunk', value: new Uint8Array(1000) } }));
        // The server holds both messages (under load and TLS that can take a while), then the
        // client's request stream fails.
        await expect.poll(() => writeReceived, { timeout: 30_000 }).toBe(2);
        pipe.fail(new ConnectError('refused after the last byte', Code.AlreadyExists));
        expect((await call).code).toBe(Code.AlreadyExists);
        await expect.poll(() => writeEndings.length, { timeout: 30_000 }).toBe(1);
        expect(writeEndings).toEqual([ending]);
      }
    },
  );

  it('an upload whose client goes quiet ends DEADLINE_EXCEEDED after the request idle limit, its handler released; a slow steady one completes', async () => {
    // A store's Write holds the blob's lock from its header to its commit: a client
    // that vanishes without its connection closing must not hold it for ever.
    const c = createClient(
      StoreService,
      createDirectGrpcTransport({ address: `127.0.0.1:${idle.port}`, security: asGateway }),
    );
    writeEndings.length = 0;
    writeReceived = 0;
    const pipe = new AsyncPipe<WriteRequest>();
    const call = codeOf(c.write(pipe, { headers: { 'x-record': 'yes' } }));
    await pipe.push(create(WriteRequestSchema, { msg: { case: 'header', value: { blobId: 'quiet' } } }));
    await pipe.push(create(WriteRequestSchema, { msg: { case: 'chunk', value: new Uint8Array(1000) } }));
    await expect.poll(() => writeEndings.length, { timeout: 30_000 }).toBe(1);
    expect(writeEndings).toEqual(['failed: DeadlineExceeded']);
    const err = await call;
    expect(err.code).toBe(Code.DeadlineExceeded);
    expect(err.rawMessage).toContain(`no request data for ${IDLE_MS} ms`);
    pipe.end();
    // Chunks every IDLE_MS / 3 for 3 × IDLE_MS: never idle that long, so it completes.
    const steady = new AsyncPipe<WriteRequest>();
    const done = c.write(steady);
    await steady.push(create(WriteRequestSchema, { msg: { case: 'header', value: { blobId: 'steady' } } }));
    for (let i = 0; i < 9; i++) {
      await sleep(IDLE_MS / 3);
      await steady.push(create(WriteRequestSchema, { msg: { case: 'chunk', value: new Uint8Array(100) } }));
    }
    steady.end();
    expect((await done).size).toBe(900n);
  });

  it('a server that is not there is UNAVAILABLE', async () => {
    const c = createClient(
      StoreService,
      createDirectGrpcTransport({ address: '127.0.0.1:1', security: asGateway }),
    );
    expect((await codeOf(c.getStats({}))).code).toBe(Code.Unavailable);
  });

  it('counts direct calls in the process metrics', async () => {
    const text = (await httpsGet(`https://${address}/metrics`)).body;
    expect(text).toMatch(/haystack_rpc_handled_total\{[^}]*method="Write"[^}]*code="ok"[^}]*\} [1-9]/);
    expect(text).toMatch(/haystack_rpc_handled_total\{[^}]*method="Read"[^}]*code="notfound"[^}]*\} [1-9]/);
  });
});
