import { createHash } from 'node:crypto';
import { createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService, StorageTier } from '../../gen/haystack/v1/blob_pb.js';
import { AlreadyExistsError, HaystackClient } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { coldTierEnv } from '../helpers/cold-tier-env.js';
import { waitFor } from '../helpers/replication-cluster.js';
import { bytes } from '../helpers/store-client.js';

/**
 * Issue 16: blob ids are write-once, and an erasure-coded blob keeps the id's
 * answers a replicated blob gives. On real processes with the cold tier on
 * (five stores, RS(3,2), cold after 3 s): an upload under the id of a cold blob
 * with other bytes is ALREADY_EXISTS and changes nothing; with the same bytes
 * it is the idempotent success a retried upload of a replicated blob gets (the
 * original cookie, nothing written), and the blob stays cold and readable.
 */
const GROUPS = 2;
let cluster: Cluster;
let client: HaystackClient;

const blobService = () =>
  createClient(BlobService, cluster.transport(cluster.gateways[0]!.address, 'gateway'));

async function info(blobId: string) {
  const b = (await blobService().stat({ blobId }, { timeoutMs: 10_000 })).blob;
  if (!b) throw new Error(`Stat of ${blobId} answered no blob`);
  return b;
}

async function reads(blobId: string, data: Buffer): Promise<void> {
  const got = await client.download(blobId);
  expect(Buffer.from(got.data).equals(data)).toBe(true);
}

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 1,
    stores: 5,
    gateways: 1,
    env: { PLACEMENT_GROUPS: String(GROUPS) },
    gatewayEnv: { CACHE_MAX_BLOB_SIZE: '0' },
    replicationEnv: coldTierEnv({ k: 3, m: 2, groups: GROUPS }, { EC_WARM_RATE: '60' }),
  });
  client = new HaystackClient({ url: cluster.url });
  await waitFor(
    async () => ((await cluster.status()).placementGroups.length === GROUPS ? true : undefined),
    60_000,
    'placement groups',
  );
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
});

describe('an upload under the id of an erasure-coded blob', () => {
  it('other bytes: ALREADY_EXISTS, nothing changed; the same bytes: the idempotent success of a replicated blob, original cookie, still cold', {
    timeout: 180_000,
  }, async () => {
    const id = 'cold-reupload';
    const data = bytes(100_003, 16);
    const first = await client.upload(data, { id });
    const cookie = (await info(id)).cookie;
    await waitFor(
      async () => ((await info(id)).tier === StorageTier.ERASURE_CODED ? true : undefined),
      90_000,
      `${id} erasure-coded`,
      () => cluster.logs(),
    );

    const other = bytes(100_003, 17);
    const err = await client.upload(other, { id }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err, String(err)).toBeInstanceOf(AlreadyExistsError);
    expect((err as Error).message).toContain('different content');
    await reads(id, data);

    const again = await client.upload(data, { id });
    expect([again.id, again.size, again.sha256]).toEqual([id, data.length, first.sha256]);
    expect(again.sha256).toBe(createHash('sha256').update(data).digest('hex'));
    const now = await info(id);
    expect(now.cookie).toBe(cookie);
    expect(now.tier).toBe(StorageTier.ERASURE_CODED);
    await reads(id, data);
  });
});
