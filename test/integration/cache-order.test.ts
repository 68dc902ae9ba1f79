import { createClient } from '@connectrpc/connect';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { createDirectGrpcTransport } from '../../internal/rpc/direct-transport.js';
import { HaystackClient, NotFoundError } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { httpsGet, securityOf, TEST_ADMIN } from '../helpers/pki.js';
import { redisClient } from '../helpers/redis.js';
import { bytes } from '../helpers/store-client.js';
import { authFetch as fetch } from '../helpers/tokens.js';

/**
 * Issue 14, "no resurrection by any path": a download that began before a delete
 * must not put the deleted blob back in the cache, however slowly it is read, whether
 * the delete's tombstone is still there or not, and even if the cache's Redis loses its
 * state meanwhile. What orders the fill after the delete is the read's fill lease (taken
 * on the miss, revoked by the delete; BlobCache.lease), not a timer.
 * Real gateway, stores, directories and Redis.
 *
 * Each read below completes in full (asserted): a store streams a needle deleted
 * after the read opened to its end (a delete marks the needle; its bytes stay in the
 * volume until compaction), and the gateway's per-message store timeout only runs
 * while the gateway pulls, not while the client's flow control holds it. So the
 * gateway reaches its fill decision with the whole, verified blob every time.
 */
let cluster: Cluster;
const TOMBSTONE_MS = 5_000;
const BLOB_BYTES = 24 * 1024 * 1024;

beforeAll(async () => {
  cluster = await Cluster.start({
    gateways: 1,
    cacheRedis: true,
    // Large enough that a 24 MiB read stalls on HTTP/2 flow control (4 MiB windows)
    // while still cacheable. The tombstone: short, so a test can outlive it. The lease:
    // long, so its expiry cannot be what drops a fill here (the delete's revocation must).
    gatewayEnv: {
      CACHE_MAX_BLOB_SIZE: '32MiB',
      CACHE_TOMBSTONE_TTL: `${TOMBSTONE_MS / 1000}s`,
      CACHE_LEASE_TTL: '600s',
      // A refused 24 MiB fill must reach Redis and be answered on a loaded box (default 500 ms).
      CACHE_COMMAND_TIMEOUT: '20s',
      MAX_UPLOAD_SIZE: '64MiB',
    },
  });
});
afterAll(async () => {
  await cluster?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function metrics(): Promise<string> {
  return (await httpsGet(`https://${cluster.gateways[0]!.address}/metrics`)).body;
}

/** haystack_gateway_cache_fills_dropped_total by reason. */
async function droppedFills(): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const m of (await metrics()).matchAll(
    /^haystack_gateway_cache_fills_dropped_total\{[^}]*reason="(\w+)"[^}]*\} (\d+)/gm,
  ))
    out[m[1]!] = Number(m[2]);
  return out;
}

async function until(cond: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(100);
  }
}

/** A download through the direct transport (HTTP/2 flow control): stalled after its header. */
async function slowDownload(blobId: string) {
  const reader = createClient(
    BlobService,
    createDirectGrpcTransport({
      address: cluster.gateways[0]?.address ?? '',
      security: await securityOf(TEST_ADMIN),
      serverRoles: ['gateway'],
    }),
  );
  // The direct transport stops reading its socket when it holds 16 messages: the
  // gateway's send blocks mid-blob, before it has decided on a fill.
  const d = reader.download({ blobId })[Symbol.asyncIterator]();
  const first = await d.next();
  expect(first.value?.msg.case).toBe('info');
  return {
    /** Reads the rest; the number of content bytes. */
    async finish(): Promise<number> {
      let received = 0;
      for (let m = await d.next(); !m.done; m = await d.next())
        if (m.value.msg.case === 'chunk') received += m.value.msg.value.length;
      return received;
    },
  };
}

/** Every read path says NOT_FOUND (after giving a fill, if any, time to land). */
async function expectGone(writer: HaystackClient, blobId: string): Promise<void> {
  await sleep(500);
  expect((await fetch(`${cluster.url}/blobs/${blobId}`)).status).toBe(404);
  const sdkRead = await writer.download(blobId).then(
    (r) => `served ${r.data.length} bytes`,
    (e: unknown) => (e instanceof NotFoundError ? 'NOT_FOUND' : String(e)),
  );
  expect(sdkRead).toBe('NOT_FOUND');
}

/**
 * A download that stalls after its header, a delete while it does, then `meanwhile`
 * (the tombstone goes), then the download finishes: the blob must stay gone, and the
 * fill be refused because the delete revoked the read's lease (not because it expired).
 */
async function deleteDuringRead(
  seed: number,
  meanwhile: (redis: Redis, blobId: string) => Promise<void>,
): Promise<void> {
  const writer = new HaystackClient({ url: cluster.url });
  const redis = redisClient(cluster.cacheRedis?.url ?? '');
  try {
    const data = bytes(BLOB_BYTES, seed);
    const b = await writer.upload(data);
    // Push-on-write cached it: evict it, so the next read goes to the stores and fills.
    await redis.del(`haystack:blob:${b.id}`);
    const read = await slowDownload(b.id);
    // The read missed and holds the id's lease; the delete (acknowledged) revokes it.
    expect(await redis.exists(`haystack:lease:${b.id}`)).toBe(1);
    expect(await writer.delete(b.id)).toBe(true);
    expect(await redis.exists(`haystack:lease:${b.id}`)).toBe(0);
    await meanwhile(redis, b.id);
    expect(await redis.exists(`haystack:deleted:${b.id}`)).toBe(0);
    const before = await droppedFills();
    // The slow reader finishes: the gateway has the whole verified blob and decides on a fill.
    expect(await read.finish()).toBe(data.length);
    await expectGone(writer, b.id);
    // Refused by the lease check (lease_lost), by nothing else.
    const after = await droppedFills();
    const cacheLogs = cluster.gateways[0]
      ?.logs()
      .split('\n')
      .filter((l) => /cache/i.test(l));
    expect(after.lease_lost ?? 0, JSON.stringify({ before, after, cacheLogs })).toBeGreaterThan(
      before.lease_lost ?? 0,
    );
  } finally {
    redis.disconnect();
    await writer.close();
  }
}

describe('cache fills are ordered after deletes', () => {
  it('a download begun before a delete and finished after its tombstone was removed does not resurrect the blob', async () => {
    // Removed by hand at once, as if expired: the read is young, no age limit could apply.
    await deleteDuringRead(77, async (redis, id) => {
      expect(await redis.del(`haystack:deleted:${id}`)).toBe(1);
    });
  });

  it('a download begun before a delete and finished after its tombstone expired does not resurrect the blob', async () => {
    await deleteDuringRead(76, async (redis, id) => {
      await until(async () => (await redis.exists(`haystack:deleted:${id}`)) === 0, TOMBSTONE_MS * 4);
    });
  });

  it('a read begun before a delete does not resurrect the blob after Redis restarts empty', async () => {
    const writer = new HaystackClient({ url: cluster.url });
    const cacheRedis = cluster.cacheRedis!;
    try {
      const data = bytes(BLOB_BYTES, 78);
      const b = await writer.upload(data);
      const redis = redisClient(cacheRedis.url);
      await redis.del(`haystack:blob:${b.id}`);
      const read = await slowDownload(b.id);
      expect(await writer.delete(b.id)).toBe(true);
      expect(await redis.exists(`haystack:deleted:${b.id}`)).toBe(1);
      redis.disconnect();
      // Redis restarts without persistence: the tombstone (and the epoch) are gone.
      await cacheRedis.kill();
      await cacheRedis.restart();
      // The gateway is back on the (empty) cache before the read finishes: the lease is
      // gone with Redis's state, and the epoch fence drops the fill before it is sent.
      await until(async () => /^haystack_gateway_cache_available 1$/m.test(await metrics()));
      await sleep(300);
      const before = await droppedFills();
      expect(await read.finish()).toBe(data.length);
      await expectGone(writer, b.id);
      expect((await droppedFills()).before_epoch ?? 0).toBeGreaterThan(before.before_epoch ?? 0);

      // Reads begun after the restart fill the cache again.
      const small = await writer.upload(bytes(4096, 79));
      const check = redisClient(cacheRedis.url);
      try {
        await check.del(`haystack:blob:${small.id}`);
        expect((await fetch(`${cluster.url}/blobs/${small.id}`)).status).toBe(200);
        await until(async () => (await check.exists(`haystack:blob:${small.id}`)) === 1, 5_000);
      } finally {
        check.disconnect();
      }
    } finally {
      await writer.close();
    }
  });
});
