import { randomBytes } from 'node:crypto';
import { create, toBinary } from '@bufbuild/protobuf';
import { type Client, Code, ConnectError, createClient } from '@connectrpc/connect';
import { createConnectTransport, createGrpcTransport } from '@connectrpc/connect-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlobService,
  PutRequestSchema,
  type UploadRequest,
  UploadRequestSchema,
} from '../../gen/haystack/v1/blob_pb.js';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { tlsNodeOptions } from '../helpers/pki.js';
import { waitFor } from '../helpers/replication-cluster.js';
import { authInterceptor, authFetch as fetch } from '../helpers/tokens.js';

/**
 * Issue 14, bounded resources for uploads:
 * - an upload cancelled mid-way (through Envoy, and straight to a gateway)
 *   stores nothing anywhere and gives back the volume space each store reserved
 *   for it: the stores' volume sizes return to what they were, the id reads NOT_FOUND;
 * - an upload that stalls after the stores reserved its space is ended by the
 *   gateway's LISTEN_REQUEST_IDLE_TIMEOUT (DEADLINE_EXCEEDED) and gives the space
 *   back the same way, well before the stores' own (default 60 s) idle limit;
 * - a unary Put above MAX_PUT_SIZE is refused with RESOURCE_EXHAUSTED naming the
 *   streaming Upload (gRPC through Envoy and direct, Connect), while the same
 *   bytes go through the Upload stream.
 */
const DECLARED = 8 * 1024 * 1024;
const MAX_PUT = 1024 * 1024;

/** Per store: bytes in its volume files (reservations included) and live needles. */
async function volumes(cluster: Cluster): Promise<string[]> {
  return Promise.all(
    cluster.stores.map(async (s) => {
      const st = await createClient(StoreService, cluster.transport(s.address, 'store')).getStats({});
      const bytes = st.volumes.reduce((n, v) => n + v.sizeBytes, 0n);
      return `${st.storeId}: ${bytes} B, ${st.needleCount} needles`;
    }),
  );
}

type Via = 'Envoy' | 'a gateway directly';

/** BlobService through Envoy with the suite's token, or a gateway directly with the operator's certificate. */
function blobsVia(cluster: Cluster, via: Via): Client<typeof BlobService> {
  return createClient(
    BlobService,
    via === 'Envoy'
      ? createGrpcTransport({ baseUrl: cluster.url, interceptors: [authInterceptor] })
      : cluster.transport(cluster.gateways[0]?.address ?? '', 'gateway'),
  );
}

/** Waits until every store's volumes differ from `before` (the upload's space reserved on each). */
function reservedOnEvery(cluster: Cluster, before: string[]): Promise<string[]> {
  return waitFor(
    async () => {
      const now = await volumes(cluster);
      return now.filter((v, i) => v !== before[i]).length === cluster.stores.length ? now : undefined;
    },
    30_000,
    'the reservation on every store',
  );
}

/** Waits (30 s at most) until every store's volumes are as `before` again. */
function givenBack(cluster: Cluster, before: string[]): Promise<string[]> {
  return waitFor(
    async () => {
      const now = await volumes(cluster);
      return now.every((v, i) => v === before[i]) ? now : undefined;
    },
    30_000,
    'the reservations given back',
  );
}

/** The id's Stat and Download answers: both must be NotFound after an upload that did not finish. */
async function lookups(blobs: Client<typeof BlobService>, blobId: string): Promise<string[]> {
  const stat = await blobs.stat({ blobId }).then(
    () => 'found',
    (e: unknown) => Code[ConnectError.from(e).code],
  );
  const read = await (async () => {
    for await (const _ of blobs.download({ blobId })) void _;
    return 'read';
  })().catch((e: unknown) => Code[ConnectError.from(e).code]);
  return [`stat ${stat}`, `download ${read}`];
}

describe('a cancelled upload', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await Cluster.start({
      stores: 3,
      replication: false,
      gatewayEnv: { MAX_PUT_SIZE: String(MAX_PUT) },
    });
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  for (const via of ['Envoy', 'a gateway directly'] satisfies Via[]) {
    it(`through ${via}: stores nothing and gives back every store's reserved space`, async () => {
      const blobs = blobsVia(cluster, via);
      // Something stored first, so the volumes exist and a size change is the reservation's.
      await new HaystackClient({ url: cluster.url }).upload(randomBytes(4096));
      const before = await volumes(cluster);
      const blobId = randomBytes(16).toString('hex');
      const cancel = new AbortController();
      async function* stream(): AsyncGenerator<UploadRequest> {
        yield create(UploadRequestSchema, {
          msg: { case: 'header', value: { blobId, size: BigInt(DECLARED) } },
        });
        yield create(UploadRequestSchema, { msg: { case: 'chunk', value: randomBytes(256 * 1024) } });
        // The rest never comes: the caller gives up.
        await new Promise((r) => cancel.signal.addEventListener('abort', r, { once: true }));
      }
      const upload = blobs.upload(stream(), { signal: cancel.signal }).then(
        () => 'stored',
        (e: unknown) => Code[ConnectError.from(e).code],
      );
      // Every member of the blob's group has reserved the declared size.
      await reservedOnEvery(cluster, before);
      cancel.abort();
      expect(await upload).toBe('Canceled');
      expect(await givenBack(cluster, before)).toEqual(before);
      expect(await lookups(blobs, blobId)).toEqual(['stat NotFound', 'download NotFound']);
    }, 120_000);
  }

  const transports = {
    'gRPC through Envoy': () =>
      createGrpcTransport({ baseUrl: cluster.url, interceptors: [authInterceptor] }),
    'gRPC to a gateway': () => cluster.transport(cluster.gateways[0]?.address ?? '', 'gateway'),
  };
  for (const [name, transport] of Object.entries(transports)) {
    it(`a unary Put above MAX_PUT_SIZE (${name}): RESOURCE_EXHAUSTED naming the Upload stream; at the limit it is stored`, async () => {
      const blobs = createClient(BlobService, transport());
      const big = randomBytes(MAX_PUT + 100 * 1024);
      const err = await blobs.put({ data: big }).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(err && Code[err.code]).toBe('ResourceExhausted');
      expect(err?.rawMessage).toMatch(/MAX_PUT_SIZE.*BlobService\.Upload/);
      // At the limit: stored (the SDK's unary path, which retries UNAVAILABLE like any caller should).
      const ok = randomBytes(MAX_PUT);
      const unary = new HaystackClient({ transport: transport(), unaryUploads: true });
      expect((await unary.upload(ok)).size).toBe(MAX_PUT);
      // The same bytes that were refused go through the Upload stream.
      const sdk = new HaystackClient({ url: cluster.url });
      const stored = await sdk.upload(big);
      expect(stored.size).toBe(big.length);
      expect(Buffer.from((await sdk.download(stored.id)).data).equals(big)).toBe(true);
    }, 60_000);
  }

  for (const [name, transport] of Object.entries(transports)) {
    it(`a unary Put far above MAX_PUT_SIZE (${name}, 24 MiB): RESOURCE_EXHAUSTED, not a stream reset`, async () => {
      // Answered before the request ends, the status reached a client through Envoy as a
      // reset (envoyproxy/envoy#30149); the gateway now reads the declared message to its
      // end, discarding it, and answers after.
      const blobs = createClient(BlobService, transport());
      const err = await blobs.put({ data: randomBytes(24 * MAX_PUT) }).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(err && `${Code[err.code]}: ${err.rawMessage}`).toMatch(
        /^ResourceExhausted: .*MAX_PUT_SIZE.*BlobService\.Upload/,
      );
    }, 60_000);
  }

  it('a unary Put above MAX_PUT_SIZE over Connect: refused before the body is read when it has a Content-Length (as the browser SDK sends it), checked after reading without one (bounded)', async () => {
    // As internal/sdk/browser.ts posts it: binary Connect unary, with a Content-Length.
    const big = randomBytes(MAX_PUT + 100 * 1024);
    const res = await fetch(`${cluster.url}/haystack.v1.BlobService/Put`, {
      method: 'POST',
      headers: { 'content-type': 'application/proto', 'connect-protocol-version': '1' },
      body: toBinary(PutRequestSchema, create(PutRequestSchema, { data: big })),
    });
    const body = (await res.json()) as { code?: string; message?: string };
    expect(body.code).toBe('resource_exhausted');
    expect(body.message).toMatch(/MAX_PUT_SIZE.*BlobService\.Upload/);
    // A chunked body (no Content-Length): read up to the JSON bound (base64), then the content checked.
    const chunked = createClient(
      BlobService,
      createConnectTransport({
        baseUrl: `https://${cluster.gateways[0]?.address}`,
        httpVersion: '1.1',
        nodeOptions: await tlsNodeOptions(),
      }),
    );
    const err = await chunked.put({ data: big }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err && Code[err.code]).toBe('ResourceExhausted');
    expect(err?.rawMessage).toMatch(/MAX_PUT_SIZE.*BlobService\.Upload/);
  }, 60_000);
});

/** The gateway's request idle limit in the stalled-upload cluster; the stores keep their 60 s default. */
const GATEWAY_IDLE_MS = 3_000;

describe('a stalled upload', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await Cluster.start({
      directories: 1,
      stores: 3,
      gateways: 1,
      replication: false,
      // Only the gateway's limit is short: the space must come back because the gateway
      // ends the stores' Write streams, not because each store times out on its own.
      gatewayEnv: { LISTEN_REQUEST_IDLE_TIMEOUT: `${GATEWAY_IDLE_MS}ms` },
    });
  }, 180_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  for (const via of ['Envoy', 'a gateway directly'] satisfies Via[]) {
    it(`through ${via}: ended by the gateway's LISTEN_REQUEST_IDLE_TIMEOUT, stores nothing and gives back every store's reserved space`, async () => {
      const blobs = blobsVia(cluster, via);
      await new HaystackClient({ url: cluster.url }).upload(randomBytes(4096));
      const before = await volumes(cluster);
      const blobId = randomBytes(16).toString('hex');
      // A trickle keeps the call alive (each piece restarts the idle clock) until the
      // test has seen every store's reservation; then the client goes silent without
      // cancelling or closing, as a hung or half-open client would.
      const reserved = new AbortController();
      const done = new AbortController();
      let stalledAt = 0;
      async function* stream(): AsyncGenerator<UploadRequest> {
        yield create(UploadRequestSchema, {
          msg: { case: 'header', value: { blobId, size: BigInt(DECLARED) } },
        });
        yield create(UploadRequestSchema, { msg: { case: 'chunk', value: randomBytes(64 * 1024) } });
        while (!reserved.signal.aborted) {
          await new Promise((r) => setTimeout(r, 200));
          yield create(UploadRequestSchema, { msg: { case: 'chunk', value: randomBytes(1024) } });
        }
        stalledAt = Date.now();
        await new Promise((r) => done.signal.addEventListener('abort', r, { once: true }));
      }
      const upload = blobs.upload(stream()).then(
        () => ({ code: 'stored', message: '' }),
        (e: unknown) => {
          const ce = ConnectError.from(e);
          return { code: Code[ce.code], message: ce.rawMessage };
        },
      );
      try {
        await reservedOnEvery(cluster, before);
        reserved.abort();
        const ended = await upload;
        const stalledMs = Date.now() - stalledAt;
        expect(ended.code).toBe('DeadlineExceeded');
        expect(ended.message).toContain('LISTEN_REQUEST_IDLE_TIMEOUT');
        // Ended by the idle limit, not sooner (a stray error would end it at once).
        expect(stalledMs).toBeGreaterThanOrEqual(GATEWAY_IDLE_MS - 500);
      } finally {
        done.abort();
      }
      // Back within 30 s: before the stores' own 60 s limit could have ended their streams.
      expect(await givenBack(cluster, before)).toEqual(before);
      expect(await lookups(blobs, blobId)).toEqual(['stat NotFound', 'download NotFound']);
    }, 120_000);
  }
});
