import { createClient } from '@connectrpc/connect';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { createDirectGrpcTransport } from '../../internal/rpc/direct-transport.js';
import { HaystackClient, NotFoundError } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { securityOf, TEST_ADMIN } from '../helpers/pki.js';
import { bytes } from '../helpers/store-client.js';
import { authFetch as fetch } from '../helpers/tokens.js';

/**
 * Issue 14, "no resurrection by a cache fill": a download that began before a
 * delete, read slowly past the delete's cache tombstone, must not put the
 * deleted blob back in the cache. Real gateway, stores, directories and Redis.
 */
let cluster: Cluster;

beforeAll(async () => {
  cluster = await Cluster.start({
    gateways: 1,
    cacheRedis: true,
    // Large enough that a 24 MiB read stalls on HTTP/2 flow control (4 MiB windows)
    // while still cacheable; a short tombstone so the test need not wait a minute.
    gatewayEnv: { CACHE_MAX_BLOB_SIZE: '32MiB', CACHE_TOMBSTONE_TTL: '1s', MAX_UPLOAD_SIZE: '64MiB' },
  });
});
afterAll(async () => {
  await cluster?.stop();
});

describe('cache fills are ordered after deletes', () => {
  it('a download begun before a delete and finished after the tombstone expired does not resurrect the blob', async () => {
    const writer = new HaystackClient({ url: cluster.url });
    const redis = new Redis(cluster.cacheRedis?.url ?? '');
    try {
      const data = bytes(24 * 1024 * 1024, 77);
      const b = await writer.upload(data);
      // Push-on-write cached it: evict it, so the next read goes to the stores and fills.
      await redis.del(`haystack:blob:${b.id}`);
      // A reader that applies HTTP/2 flow control (the direct transport stops reading
      // its socket when it holds 16 messages): the gateway's send blocks mid-blob.
      const reader = createClient(
        BlobService,
        createDirectGrpcTransport({
          address: cluster.gateways[0]?.address ?? '',
          security: await securityOf(TEST_ADMIN),
          serverRoles: ['gateway'],
        }),
      );
      const d = reader.download({ blobId: b.id })[Symbol.asyncIterator]();
      const first = await d.next();
      expect(first.value?.msg.case).toBe('info');
      // The reader stalls; the blob is deleted (acknowledged), and its tombstone expires.
      expect(await writer.delete(b.id)).toBe(true);
      await new Promise((r) => setTimeout(r, 1500));
      // The slow reader finishes (or is cut off: either way the gateway decides on a fill now).
      let received = 0;
      try {
        for (let m = await d.next(); !m.done; m = await d.next())
          if (m.value.msg.case === 'chunk') received += m.value.msg.value.length;
      } catch {
        // A store may end the read of a deleted needle: no fill then.
      }
      // Give the gateway's fill (if any) time to land, then every read path must say NOT_FOUND.
      await new Promise((r) => setTimeout(r, 500));
      expect((await fetch(`${cluster.url}/blobs/${b.id}`)).status).toBe(404);
      const sdkRead = await writer.download(b.id).then(
        (r) => `served ${r.data.length} bytes`,
        (e: unknown) => (e instanceof NotFoundError ? 'NOT_FOUND' : String(e)),
      );
      expect(sdkRead).toBe('NOT_FOUND');
      expect(received).toBeGreaterThan(0);
    } finally {
      redis.disconnect();
      await writer.close();
    }
  });
});
