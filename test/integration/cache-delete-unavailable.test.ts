import { Code, ConnectError, createClient } from '@connectrpc/connect';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { DirectoryRole } from '../../gen/haystack/v1/directory_pb.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { redisUrl } from '../../internal/security/redis-acl.js';
import { Cluster } from '../helpers/cluster.js';
import { httpsGet, httpsRequest, testTransport } from '../helpers/pki.js';
import { redisClient } from '../helpers/redis.js';
import { bytes } from '../helpers/store-client.js';
import { TcpProxy } from '../helpers/tcp-proxy.js';

/**
 * The blob cache's two resurrection paths written as open in docs/faults.md, on real
 * processes: a delete through a gateway that cannot reach the cache Redis (gateway-0
 * reaches it through a proxy the test cuts; gateway-1 directly), and a cache Redis that
 * restarts empty (the shared commit index is gone with it).
 */
let cluster: Cluster;
let proxy: TcpProxy;
let admin: Redis;

beforeAll(async () => {
  proxy = await TcpProxy.start();
  cluster = await Cluster.start({
    gateways: 2,
    cacheRedis: true,
    // Long: a loaded box must not time a cache command out where the test expects none.
    gatewayEnv: { CACHE_COMMAND_TIMEOUT: '5s' },
    gatewayEnvOf: (i, c): Record<string, string> => {
      const r = c.cacheRedis!;
      proxy.targetPort = r.port;
      return i === 0 ? { REDIS_URL: redisUrl(r.user, '127.0.0.1', proxy.port) } : {};
    },
  });
  admin = redisClient(cluster.cacheRedis!.adminUrl);
});
afterAll(async () => {
  admin?.disconnect();
  await cluster?.stop();
  await proxy?.close();
});

async function until(cond: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 100));
  }
}

const address = (i: number) => cluster.gateways[i]!.address;
const blobKey = (id: string) => `haystack:blob:${id}`;

async function metrics(i: number): Promise<string> {
  return (await httpsGet(`https://${address(i)}/metrics`)).body;
}

/** Waits until gateway i reports the cache (un)available. */
function cacheAvailable(i: number, up: boolean): Promise<void> {
  return until(async () =>
    new RegExp(`^haystack_gateway_cache_available ${up ? 1 : 0}$`, 'm').test(await metrics(i)),
  );
}

async function droppedFills(i: number, reason: string): Promise<number> {
  const m = new RegExp(
    `^haystack_gateway_cache_fills_dropped_total\\{[^}]*reason="${reason}"[^}]*\\} (\\d+)`,
    'm',
  );
  return Number(m.exec(await metrics(i))?.[1] ?? 0);
}

/** BlobService on gateway i (no retries: the test sees each answer). */
async function gateway(i: number) {
  return createClient(BlobService, await testTransport(address(i), 'gateway'));
}

/** Bytes read through gateway i, or the gRPC code name. */
async function readVia(i: number, blobId: string): Promise<number | string> {
  try {
    let n = 0;
    for await (const m of (await gateway(i)).download({ blobId }))
      if (m.msg.case === 'chunk') n += m.msg.value.length;
    return n;
  } catch (e) {
    return Code[ConnectError.from(e).code];
  }
}

async function deleteVia(i: number, blobId: string): Promise<{ found: boolean } | ConnectError> {
  return (await gateway(i)).delete({ blobId }).then(
    (r) => ({ found: r.found }),
    (e: unknown) => ConnectError.from(e),
  );
}

/** A Connect-protocol delete (what the browser SDK sends) straight to gateway i. */
function httpDelete(i: number, blobId: string) {
  return httpsRequest(`https://${address(i)}/haystack.v1.BlobService/Delete`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ blobId }),
  });
}

/** Uploads small blobs and waits until the shared cache holds each (push-on-write or a fill). */
async function cachedBlobs(n: number, seed: number): Promise<string[]> {
  const sdk = new HaystackClient({ url: cluster.url });
  try {
    const ids: string[] = [];
    for (let k = 0; k < n; k++) {
      const b = await sdk.upload(bytes(4096, seed + k));
      await until(async () => {
        if ((await admin.exists(blobKey(b.id))) === 1) return true;
        await readVia(1, b.id);
        return false;
      });
      ids.push(b.id);
    }
    return ids;
  } finally {
    await sdk.close();
  }
}

describe('a delete is acknowledged only once the cache Redis was told', () => {
  it('answers UNAVAILABLE (gRPC) and 503 with Retry-After (HTTP) while its gateway cannot reach the cache; the retry is acknowledged and every gateway answers NOT_FOUND', async () => {
    const [a, b] = (await cachedBlobs(2, 300)) as [string, string];
    proxy.cut();
    await cacheAvailable(0, false);

    const refused = await deleteVia(0, a);
    expect(refused).toBeInstanceOf(ConnectError);
    const err = refused as ConnectError;
    expect(Code[err.code]).toBe('Unavailable');
    expect(err.rawMessage).toContain(`blob ${a} is deleted on the stores`);
    expect(err.rawMessage).toContain('the shared blob cache could not be told');
    // The cache's address is the operator's, not the caller's: it is in the gateway's log only.
    expect(err.rawMessage).not.toContain(String(proxy.port));
    expect(err.rawMessage).toContain('retry: deletes are idempotent');
    expect(err.rawMessage).not.toContain(cluster.cacheRedis!.user.password);
    // Why it may not be acknowledged: the entry is still there, and another gateway serves it.
    expect(await admin.exists(blobKey(a))).toBe(1);
    expect(await readVia(1, a)).toBe(4096);
    // The retry through a gateway that reaches the cache: the stores say not found, the cache is told.
    expect(await deleteVia(1, a)).toEqual({ found: false });
    expect(await admin.exists(blobKey(a))).toBe(0);
    expect(await readVia(1, a)).toBe('NotFound');

    const http = await httpDelete(0, b);
    expect(http.status, http.body.toString()).toBe(503);
    expect(http.headers['retry-after']).toBe('1');
    expect(JSON.parse(http.body.toString())).toMatchObject({ code: 'unavailable' });
    expect(await admin.exists(blobKey(b))).toBe(1);

    proxy.heal();
    await cacheAvailable(0, true);
    const retried = await httpDelete(0, b);
    expect(retried.status, retried.body.toString()).toBe(200);
    expect(JSON.parse(retried.body.toString())).toEqual({}); // found: false (the default) left out
    for (const id of [a, b]) {
      expect(await admin.exists(blobKey(id))).toBe(0);
      for (const i of [0, 1]) expect(await readVia(i, id), `${id} via gateway-${i}`).toBe('NotFound');
    }
  });
});

describe('a cache Redis that restarts empty', () => {
  it('grants no fill lease until the commit index is restored from the directory leader, and serves no deleted blob', async () => {
    proxy.heal();
    const [gone, kept, later] = (await cachedBlobs(3, 400)) as [string, string, string];
    const sdk = new HaystackClient({ url: cluster.url });
    try {
      expect(await sdk.delete(gone)).toBe(true);
    } finally {
      await sdk.close();
    }
    const status = await cluster.status();
    const deletedAt = status.directories.find((d) => d.role === DirectoryRole.LEADER)?.commitIndex ?? 0n;
    expect(deletedAt).toBeGreaterThan(0n);

    admin.disconnect();
    await cluster.cacheRedis!.kill();
    await cluster.cacheRedis!.restart();
    admin = redisClient(cluster.cacheRedis!.adminUrl);
    await cacheAvailable(0, true);
    await cacheAvailable(1, true);
    for (const i of [0, 1]) expect(await readVia(i, gone)).toBe('NotFound');

    // A read fills again only once some gateway restored the index, to at least the delete's.
    await until(async () => {
      expect(await readVia(1, kept)).toBe(4096);
      return (await admin.exists(blobKey(kept))) === 1;
    });
    expect(BigInt((await admin.get('haystack:commit-index')) ?? '-1')).toBeGreaterThanOrEqual(deletedAt);

    // The index lost again (evicted, say): the next miss gets no lease, and restores it.
    const before = await droppedFills(1, 'index_missing');
    await admin.del('haystack:commit-index', blobKey(later));
    expect(await readVia(1, later)).toBe(4096);
    expect(await droppedFills(1, 'index_missing')).toBeGreaterThan(before);
    await until(async () => {
      expect(await readVia(1, later)).toBe(4096);
      return (await admin.exists(blobKey(later))) === 1;
    });
    expect(BigInt((await admin.get('haystack:commit-index')) ?? '-1')).toBeGreaterThanOrEqual(deletedAt);
    for (const i of [0, 1]) expect(await readVia(i, gone)).toBe('NotFound');
  });
});
