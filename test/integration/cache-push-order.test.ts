import { type Client, Code, ConnectError, createClient } from '@connectrpc/connect';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { createDirectGrpcTransport } from '../../internal/rpc/direct-transport.js';
import { redisUrl } from '../../internal/security/redis-acl.js';
import { Cluster } from '../helpers/cluster.js';
import { httpsGet, securityOf, TEST_ADMIN } from '../helpers/pki.js';
import { redisClient } from '../helpers/redis.js';
import { RedisHoldProxy } from '../helpers/redis-hold-proxy.js';
import { bytes } from '../helpers/store-client.js';

/**
 * Push-on-write ordered after deletes (docs/faults.md, "Push-on-write racing a delete"):
 * a write's cache push that reaches Redis after a delete of the same id was acknowledged
 * must not put the deleted blob back. gateway-0 reaches the cache Redis through a proxy
 * that holds its push (the SET_BLOB script, sent after the write committed) until the test
 * has deleted the blob through gateway-1; the push then finds its write lease revoked.
 * Real gateways, stores, directories and Redis; nothing waits on a timer.
 */
let cluster: Cluster;
let proxy: RedisHoldProxy;
let redis: Redis;
/** BlobService of gateway i, straight to it (no Envoy). */
let blobs: Client<typeof BlobService>[] = [];
let uploads = 0;

async function until(cond: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Gateway i's counter samples of `name`, by the value of `label`. */
async function samples(i: number, name: string, label: string): Promise<Record<string, number>> {
  const body = (await httpsGet(`https://${cluster.gateways[i]!.address}/metrics`)).body;
  const out: Record<string, number> = {};
  for (const m of body.matchAll(new RegExp(`^${name}\\{[^}]*${label}="(\\w+)"[^}]*\\} (\\d+)`, 'gm')))
    out[m[1]!] = Number(m[2]);
  return out;
}

const dropped = (i: number) => samples(i, 'haystack_gateway_cache_fills_dropped_total', 'reason');

/** A Download through gateway i: its bytes, or the gRPC code's name. */
async function download(i: number, blobId: string): Promise<Buffer | string> {
  try {
    const parts: Uint8Array[] = [];
    for await (const m of blobs[i]!.download({ blobId })) if (m.msg.case === 'chunk') parts.push(m.msg.value);
    return Buffer.concat(parts);
  } catch (e) {
    return Code[ConnectError.from(e).code];
  }
}

/** A new blob put through gateway-0, when its push landed in the cache. */
async function pushedUpload(): Promise<{ id: string; data: Buffer } | undefined> {
  const id = `push-order-warm-${++uploads}`;
  const data = bytes(4096, uploads);
  await blobs[0]!.put({ blobId: id, data });
  return (await redis.exists(`haystack:blob:${id}`)) === 1 ? { id, data } : undefined;
}

beforeAll(async () => {
  cluster = await Cluster.start({
    gateways: 2,
    cacheRedis: true,
    envoy: false,
    // Long: an expired write lease must not be what drops the push here (the delete must).
    gatewayEnv: { CACHE_LEASE_TTL: '600s' },
  });
  const cache = cluster.cacheRedis!;
  proxy = await RedisHoldProxy.start({ host: '127.0.0.1', port: cache.port });
  // gateway-0 again, on the proxy; it waits for a held push's answer (default timeout 500 ms).
  await cluster.gateways[0]!.kill();
  await cluster.startGateway(0, {
    REDIS_URL: redisUrl(cache.user, '127.0.0.1', proxy.port),
    CACHE_COMMAND_TIMEOUT: '60s',
  });
  redis = redisClient(cache.url);
  const security = await securityOf(TEST_ADMIN);
  blobs = cluster.gateways.map((g) =>
    createClient(
      BlobService,
      createDirectGrpcTransport({ address: g.address, security, serverRoles: ['gateway'] }),
    ),
  );
  // After its start gateway-0 learns the cache's epoch, then grants write leases: wait for a push.
  await until(async () => (await pushedUpload()) !== undefined);
});
afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
  await proxy?.close();
});

describe('push-on-write is ordered after deletes by write leases', () => {
  it('a pushed write is served from the cache through another gateway, its write lease ended', async () => {
    const pushed = await pushedUpload();
    expect(pushed).toBeDefined(); // gateway-0 knows the epoch (beforeAll): every push lands
    const { id, data } = pushed!;
    expect(await redis.exists(`haystack:lease:${id}`)).toBe(0);
    const hits = (await samples(1, 'haystack_gateway_cache_lookups_total', 'result')).hit ?? 0;
    expect(await download(1, id)).toEqual(data);
    expect((await samples(1, 'haystack_gateway_cache_lookups_total', 'result')).hit).toBe(hits + 1);
  });

  it('a delete acknowledged between a write’s commit and its cache push: the push is dropped, the blob stays deleted', async () => {
    const id = `push-order-${Date.now()}`;
    const data = bytes(64 * 1024, 7);
    const before = await dropped(0);
    // gateway-0's push of this id: the SET_BLOB script (EVALSHA or EVAL), its first key the entry.
    const held = proxy.hold(
      (args) => /^evalsha$|^eval$/i.test(args[0] ?? '') && args[3] === `haystack:blob:${id}`,
    );
    const put = blobs[0]!.put({ blobId: id, data });
    put.catch(() => {}); // awaited below
    await held; // sent after the write committed (stores and directory)
    const leaseAtPush = await redis.get(`haystack:lease:${id}`);
    expect((await blobs[1]!.delete({ blobId: id })).found).toBe(true);
    const leaseAfterDelete = await redis.exists(`haystack:lease:${id}`);
    proxy.release();
    expect((await put).blob?.blobId).toBe(id); // the write was acknowledged, after its push was answered

    // After the delete was acknowledged, no gateway serves the blob, and the cache holds no entry.
    for (const [i, g] of cluster.gateways.entries()) {
      expect((await httpsGet(`https://${g.address}/blobs/${id}`)).status, `GET via gateway-${i}`).toBe(404);
      expect(await download(i, id), `Download via gateway-${i}`).toBe('NotFound');
    }
    expect(await redis.exists(`haystack:blob:${id}`)).toBe(0);
    // Dropped because the delete revoked the write lease taken before the commit.
    expect(leaseAtPush).toMatch(/^[0-9a-f]{32}$/);
    expect(leaseAfterDelete).toBe(0);
    const after = await dropped(0);
    expect(after.write_lease_lost, JSON.stringify({ before, after })).toBe(
      (before.write_lease_lost ?? 0) + 1,
    );
  });
});
