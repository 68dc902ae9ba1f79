import http2 from 'node:http2';
import { create, type MessageInitShape, toBinary } from '@bufbuild/protobuf';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlobService,
  StatRequestSchema,
  type UploadRequest,
  UploadRequestSchema,
} from '../../gen/haystack/v1/blob_pb.js';
import { DirectoryService } from '../../gen/haystack/v1/directory_pb.js';
import { ReplicationService } from '../../gen/haystack/v1/replication_pb.js';
import { StoreService, type WriteRequest, WriteRequestSchema } from '../../gen/haystack/v1/store_pb.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { httpsGet, httpsRequest, securityOf, TEST_GATEWAY, tlsNodeOptions } from '../helpers/pki.js';
import { bytes, sameBytes } from '../helpers/store-client.js';
import { adminAuthHeader, authInterceptor, authFetch as fetch } from '../helpers/tokens.js';

/**
 * Every public RPC fed invalid requests — missing fields, oversized ids, negative
 * ranges, unknown ids, wrong content types — answers the right gRPC status, and
 * the servers keep serving. BlobService through Envoy and directly at a gateway;
 * the internal services' obvious cases directly.
 */
const LONG_ID = 'x'.repeat(300);

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (e) {
    return Code[ConnectError.from(e).code] ?? String(e);
  }
}

async function drain(it: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of it) {
    // consume
  }
}

function upload(
  msgs: Array<MessageInitShape<typeof UploadRequestSchema>['msg']>,
): AsyncIterable<UploadRequest> {
  return (async function* () {
    for (const msg of msgs) yield create(UploadRequestSchema, { msg });
  })();
}

function write(msgs: Array<MessageInitShape<typeof WriteRequestSchema>['msg']>): AsyncIterable<WriteRequest> {
  return (async function* () {
    for (const msg of msgs) yield create(WriteRequestSchema, { msg });
  })();
}

describe('bad input to every public RPC', () => {
  let cluster: Cluster;
  let known: string;
  const knownData = bytes(5000, 77);

  beforeAll(async () => {
    cluster = await Cluster.start({ directories: 3, stores: 3, gateways: 1 });
    const sdk = new HaystackClient({ url: cluster.url });
    known = (await sdk.upload(knownData)).id;
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  /** Everything still answers: each process alive, a round trip through Envoy works. */
  async function stillServing(): Promise<void> {
    for (const p of [...cluster.directories, ...cluster.stores, ...cluster.gateways]) {
      expect(p.child.exitCode, p.name).toBeNull();
      expect(p.child.signalCode, p.name).toBeNull();
    }
    const sdk = new HaystackClient({ url: cluster.url });
    const data = bytes(3000, Date.now() % 1000);
    const b = await sdk.upload(data);
    expect(sameBytes((await sdk.download(b.id)).data, data)).toBe('identical');
  }

  const blobCases = (svc: () => ReturnType<typeof createClient<typeof BlobService>>) =>
    [
      [
        'Put: id with forbidden characters',
        () => svc().put({ blobId: 'bad id!', data: new Uint8Array(1) }),
        'InvalidArgument',
      ],
      ['Put: 300-byte id', () => svc().put({ blobId: LONG_ID, data: new Uint8Array(1) }), 'InvalidArgument'],
      [
        'Put: content type that is no MIME type',
        () => svc().put({ data: new Uint8Array(1), contentType: 'not a type' }),
        'InvalidArgument',
      ],
      [
        'Put: replica_count 99',
        () => svc().put({ data: new Uint8Array(1), replicaCount: 99 }),
        'InvalidArgument',
      ],
      [
        'Put: replica_count 5 on 3 stores (no retry helps)',
        () => svc().put({ data: new Uint8Array(1), replicaCount: 5 }),
        'FailedPrecondition',
      ],
      ['Upload: no message at all', () => svc().upload(upload([])), 'InvalidArgument'],
      [
        'Upload: content before the header',
        () => svc().upload(upload([{ case: 'chunk', value: new Uint8Array(4) }])),
        'InvalidArgument',
      ],
      [
        'Upload: header announces 10 bytes, none follow',
        () => svc().upload(upload([{ case: 'header', value: { size: 10n } }])),
        'InvalidArgument',
      ],
      [
        'Upload: more bytes than announced',
        () =>
          svc().upload(
            upload([
              { case: 'header', value: { size: 2n } },
              { case: 'chunk', value: new Uint8Array(5) },
            ]),
          ),
        'InvalidArgument',
      ],
      [
        'Upload: sha256 not hex',
        () =>
          svc().upload(
            upload([
              { case: 'header', value: { size: 1n, sha256: 'xyz' } },
              { case: 'chunk', value: new Uint8Array(1) },
            ]),
          ),
        'InvalidArgument',
      ],
      [
        'Upload: sha256 of other content',
        () =>
          svc().upload(
            upload([
              { case: 'header', value: { size: 1n, sha256: 'a'.repeat(64) } },
              { case: 'chunk', value: new Uint8Array(1) },
            ]),
          ),
        'InvalidArgument',
      ],
      [
        'Upload: 1 TiB announced',
        () => svc().upload(upload([{ case: 'header', value: { size: 2n ** 40n } }])),
        'ResourceExhausted',
      ],
      [
        'Upload: two headers',
        () =>
          svc().upload(
            upload([
              { case: 'header', value: { size: 1n } },
              { case: 'header', value: { size: 1n } },
            ]),
          ),
        'InvalidArgument',
      ],
      ['Download: empty id', () => drain(svc().download({ blobId: '' })), 'InvalidArgument'],
      ['Download: 300-byte id', () => drain(svc().download({ blobId: LONG_ID })), 'InvalidArgument'],
      ['Download: unknown id', () => drain(svc().download({ blobId: 'no-such-blob' })), 'NotFound'],
      [
        'Download: offset past the end',
        () => drain(svc().download({ blobId: known, offset: 1_000_000n })),
        'OutOfRange',
      ],
      [
        'Download: offset 2^64-1',
        () => drain(svc().download({ blobId: known, offset: 2n ** 64n - 1n })),
        'OutOfRange',
      ],
      ['Stat: unknown id', () => svc().stat({ blobId: 'no-such-blob' }), 'NotFound'],
      ['Stat: empty id', () => svc().stat({ blobId: '' }), 'InvalidArgument'],
      ['Delete: empty id', () => svc().delete({ blobId: '' }), 'InvalidArgument'],
      ['Delete: 300-byte id', () => svc().delete({ blobId: LONG_ID }), 'InvalidArgument'],
      [
        'List: a page token it never issued',
        () => svc().list({ pageToken: '%%%not-a-token%%%' }),
        'InvalidArgument',
      ],
    ] as const;

  for (const via of ['Envoy', 'a gateway directly'] as const) {
    it(`BlobService through ${via}: each invalid request gets the right status`, async () => {
      const client = createClient(
        BlobService,
        via === 'Envoy'
          ? createGrpcTransport({ baseUrl: cluster.url, interceptors: [authInterceptor] })
          : cluster.transport(cluster.gateways[0]?.address as string, 'gateway'),
      );
      const got: Array<[string, string]> = [];
      for (const [name, call] of blobCases(() => client)) got.push([name, await codeOf(call())]);
      expect(got).toEqual(blobCases(() => client).map(([name, , want]) => [name, want]));
      // An unknown id deletes as "not found"; a page above the documented maximum is refused.
      expect((await client.delete({ blobId: 'no-such-blob' })).found).toBe(false);
      expect(await codeOf(client.list({ pageSize: 1_000_000 }))).toBe('InvalidArgument');
      expect((await client.list({ pageSize: 1000 })).blobs.length).toBeGreaterThan(0);
      // A uint64 offset is named exactly in the message (a bigint, never a float).
      const past = await drain(client.download({ blobId: known, offset: 2n ** 64n - 1n })).catch(
        (e: unknown) => ConnectError.from(e),
      );
      expect(String((past as ConnectError).rawMessage)).toContain('offset 18446744073709551615 ');
      await stillServing();
    });
  }

  it('wrong content types, malformed bodies and negative ranges over HTTP (Envoy and gateway)', async () => {
    // The gateway's own port takes HTTP only over mTLS (see security.test.ts); Envoy is the public door.
    const gw = `https://${cluster.gateways[0]?.address}`;
    expect((await httpsGet(`${gw}/blobs/${known}`, null)).status).toBe(401);
    expect((await httpsGet(`${gw}/blobs/${known}`)).status).toBe(200);
    for (const base of [cluster.url]) {
      const post = (path: string, contentType: string, body: string | Uint8Array) =>
        fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': contentType }, body });
      // Connect unary with a content type no protocol speaks: 415.
      expect((await post('/haystack.v1.BlobService/Stat', 'text/plain', '{}')).status).toBe(415);
      // Connect JSON that is not JSON: invalid_argument.
      const bad = await post('/haystack.v1.BlobService/Stat', 'application/json', '{"blobId": ');
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { code: string }).code).toBe('invalid_argument');
      // A negative offset (uint64) in Connect JSON: invalid_argument, not a crash.
      const neg = await post('/haystack.v1.BlobService/Stat', 'application/json', '{"blobId": -5}');
      expect(((await neg.json()) as { code: string }).code).toBe('invalid_argument');
      const envelope = (json: string) => {
        const body = Buffer.from(json);
        const head = Buffer.alloc(5);
        head.writeUInt32BE(body.length, 1);
        return Buffer.concat([head, body]);
      };
      const dl = await post(
        '/haystack.v1.BlobService/Download',
        'application/connect+json',
        envelope(`{"blobId":"${known}","offset":"-1"}`),
      );
      const text = Buffer.from(await dl.arrayBuffer()).toString('latin1');
      expect(text).toContain('invalid_argument');
      // gRPC-Web with a body that is not protobuf: INVALID_ARGUMENT in the trailers (the
      // caller's fault), no crash.
      const g = await post(
        '/haystack.v1.BlobService/Stat',
        'application/grpc-web+proto',
        envelope('\xff\xff\xff'),
      );
      // Through Envoy it reaches the direct gRPC path: INVALID_ARGUMENT (straight to a gateway: below).
      expect(Buffer.from(await g.arrayBuffer()).toString('latin1')).toMatch(/grpc-status: ?3\b/);
      // GET /blobs/{id}: bad ids, unknown ids, unsatisfiable and nonsensical ranges.
      expect((await fetch(`${base}/blobs/${'y'.repeat(300)}`)).status).toBe(400);
      expect((await fetch(`${base}/blobs/no-such-blob`)).status).toBe(404);
      expect((await fetch(`${base}/blobs/${known}`, { headers: { range: 'bytes=999999-' } })).status).toBe(
        416,
      );
      const junk = await fetch(`${base}/blobs/${known}`, { headers: { range: 'bytes=-x-5' } });
      expect(junk.status).toBe(200); // an unusable Range is ignored: the whole blob
      expect(sameBytes(new Uint8Array(await junk.arrayBuffer()), knownData)).toBe('identical');
    }
    await stillServing();
  });

  it('undecodable protobuf straight to a gateway: INVALID_ARGUMENT over Connect (unary, streaming), gRPC-Web and gRPC', async () => {
    const gw = cluster.gateways[0]!.address;
    const auth = await adminAuthHeader();
    const garbage = Buffer.from([0xff, 0xff, 0xff]);
    const envelope = (b: Buffer) => {
      const head = Buffer.alloc(5);
      head.writeUInt32BE(b.length, 1);
      return Buffer.concat([head, b]);
    };
    const post = (path: string, contentType: string, body: Buffer, headers: Record<string, string> = {}) =>
      httpsRequest(`https://${gw}${path}`, {
        method: 'POST',
        headers: { 'content-type': contentType, ...auth, ...headers },
        body,
      });
    const decodeMessage = /cannot decode the request message \(haystack\.v1\.(StatRequest|DownloadRequest)\)/;
    // Connect unary, binary: HTTP 400 with a Connect error body.
    const unary = await post('/haystack.v1.BlobService/Stat', 'application/proto', garbage, {
      'connect-protocol-version': '1',
    });
    expect(unary.status).toBe(400);
    const err = JSON.parse(unary.body.toString('utf8')) as { code: string; message: string };
    expect(err.code).toBe('invalid_argument');
    expect(err.message).toMatch(decodeMessage);
    // Connect server streaming: the end-stream message carries the error.
    const stream = await post(
      '/haystack.v1.BlobService/Download',
      'application/connect+proto',
      envelope(garbage),
      {
        'connect-protocol-version': '1',
      },
    );
    expect(stream.body.toString('latin1')).toMatch(/"code":"invalid_argument"/);
    expect(stream.body.toString('latin1')).toMatch(decodeMessage);
    // gRPC-Web: the trailers.
    const web = await post('/haystack.v1.BlobService/Stat', 'application/grpc-web+proto', envelope(garbage));
    expect(web.body.toString('latin1')).toMatch(/grpc-status: ?3\b/);
    expect(decodeURIComponent(web.body.toString('latin1'))).toMatch(decodeMessage);
    // A valid message still works on each (the check passes the body through unchanged).
    const ok = await post(
      '/haystack.v1.BlobService/Stat',
      'application/proto',
      Buffer.from(toBinary(StatRequestSchema, create(StatRequestSchema, { blobId: known }))),
      { 'connect-protocol-version': '1' },
    );
    expect(ok.status).toBe(200);
    // gRPC (HTTP/2): BlobService takes the direct path (direct-grpc.test.ts); Health is
    // connect-node's gRPC, checked by the same decoder.
    const tls = await tlsNodeOptions();
    const session = http2.connect(`https://${gw}`, tls);
    try {
      const trailers = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
        const req = session.request({
          ':method': 'POST',
          ':path': '/grpc.health.v1.Health/Check',
          'content-type': 'application/grpc',
          te: 'trailers',
        });
        let headers: http2.IncomingHttpHeaders = {};
        req.on('response', (h) => {
          headers = h;
        });
        req.on('trailers', (t) => resolve({ ...headers, ...t }));
        req.on('end', () => resolve(headers));
        req.on('error', reject);
        req.resume();
        req.end(envelope(Buffer.from([0x0a, 0xff])));
      });
      expect(trailers['grpc-status']).toBe('3');
      expect(decodeURIComponent(String(trailers['grpc-message']))).toMatch(
        /grpc\.health\.v1\.HealthCheckRequest/,
      );
    } finally {
      session.close();
    }
    await stillServing();
  });

  it('StoreService: malformed writes, unknown ids and volumes', async () => {
    const store = createClient(
      StoreService,
      cluster.transport(cluster.stores[0]?.address as string, 'store', await securityOf(TEST_GATEWAY)),
    );
    // Compact and Scrub are an operator's (or the manager's) calls.
    const asAdmin = createClient(
      StoreService,
      cluster.transport(cluster.stores[0]?.address as string, 'store'),
    );
    const got = {
      chunkFirst: await codeOf(store.write(write([{ case: 'chunk', value: new Uint8Array(3) }]))),
      noMessages: await codeOf(store.write(write([]))),
      badId: await codeOf(
        store.write(
          write([
            { case: 'header', value: { blobId: 'a b', size: 1n } },
            { case: 'chunk', value: new Uint8Array(1) },
          ]),
        ),
      ),
      longId: await codeOf(
        store.write(
          write([
            { case: 'header', value: { blobId: LONG_ID, size: 1n } },
            { case: 'chunk', value: new Uint8Array(1) },
          ]),
        ),
      ),
      short: await codeOf(
        store.write(
          write([
            { case: 'header', value: { blobId: 'short-1', size: 10n } },
            { case: 'chunk', value: new Uint8Array(4) },
          ]),
        ),
      ),
      long: await codeOf(
        store.write(
          write([
            { case: 'header', value: { blobId: 'long-1', size: 2n } },
            { case: 'chunk', value: new Uint8Array(4) },
          ]),
        ),
      ),
      readUnknown: await codeOf(drain(store.read({ blobId: 'no-such-blob' }))),
      readEmptyId: await codeOf(drain(store.read({ blobId: '' }))),
      readPastEnd: await codeOf(drain(store.read({ blobId: known, offset: 10_000_000n }))),
      compactUnknownVolume: await codeOf(asAdmin.compact({ volumeId: 4242 })),
      scrubUnknownVolume: await codeOf(asAdmin.scrub({ volumeId: 4242 })),
      deleteEmptyId: await codeOf(store.delete({ blobId: '', term: 1n })),
    };
    expect(got).toEqual({
      chunkFirst: 'InvalidArgument',
      noMessages: 'InvalidArgument',
      badId: 'InvalidArgument',
      longId: 'InvalidArgument',
      short: 'InvalidArgument',
      long: 'InvalidArgument',
      readUnknown: 'NotFound',
      readEmptyId: 'InvalidArgument',
      readPastEnd: 'OutOfRange',
      compactUnknownVolume: 'NotFound',
      scrubUnknownVolume: 'NotFound',
      deleteEmptyId: 'InvalidArgument',
    });
    // Nothing half-written became readable.
    expect(await codeOf(drain(store.read({ blobId: 'short-1' })))).toBe('NotFound');
    expect(await codeOf(drain(store.read({ blobId: 'long-1' })))).toBe('NotFound');
    await stillServing();
  });

  it('DirectoryService and ReplicationService: invalid ids, too many ids, bad tokens, unknown blobs', async () => {
    const leader = await cluster.leaderIndex();
    const dir = createClient(
      DirectoryService,
      cluster.transport(
        cluster.directoryAddrs.split(',')[leader] as string,
        'directory',
        await securityOf(TEST_GATEWAY),
      ),
    );
    const got = {
      locateTooMany: await codeOf(dir.locate({ blobIds: Array.from({ length: 1001 }, (_, i) => `b${i}`) })),
      locateBadId: await codeOf(dir.locate({ blobIds: ['a b'] })),
      allocateBadId: await codeOf(dir.allocateWrite({ blobId: LONG_ID, size: 1n })),
      allocateNoId: await codeOf(dir.allocateWrite({ blobId: '', size: 1n })),
      deleteBadId: await codeOf(dir.delete({ blobId: 'a/b' })),
      listBadToken: await codeOf(dir.list({ pageToken: '%%' })),
    };
    expect(got).toEqual({
      locateTooMany: 'InvalidArgument',
      locateBadId: 'InvalidArgument',
      allocateBadId: 'InvalidArgument',
      allocateNoId: 'InvalidArgument',
      deleteBadId: 'InvalidArgument',
      listBadToken: 'InvalidArgument',
    });
    const rep = createClient(
      ReplicationService,
      cluster.transport(
        cluster.replication?.address as string,
        'replication',
        await securityOf({ role: 'replication', id: 'test-manager' }),
      ),
    );
    const r = {
      statusUnknown: await codeOf(rep.getBlobStatus({ blobId: 'no-such-blob' })),
      statusBadId: await codeOf(rep.getBlobStatus({ blobId: LONG_ID })),
      corruptionNoStore: await codeOf(rep.reportCorruption({ storeId: '', blobIds: ['x'] })),
    };
    expect(r).toEqual({
      statusUnknown: 'NotFound',
      statusBadId: 'InvalidArgument',
      corruptionNoStore: 'InvalidArgument',
    });
    await stillServing();
  });
});
