import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { placementGroupOf } from '../../internal/common/placement.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/replication-cluster.js';
import { bytes, storeClient } from '../helpers/store-client.js';

/**
 * A store added to a running cluster gets its share of placement-group memberships
 * by itself (PLACEMENT_AUTO_BALANCE_AFTER), with real processes (Redis, a directory,
 * stores, the replication manager that backfills the moves, a gateway, Envoy): 3
 * stores hold every group, a 4th registers later, and with no admin call it ends up
 * with a quarter of the memberships, each ACTIVE and holding its groups' blobs.
 */
const GROUPS = 16;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let cluster: Cluster;
let client: HaystackClient;
const acked = new Map<string, string>();

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 1,
    stores: 3,
    gateways: 1,
    // A loaded machine must not flap stores DOWN (each flap demotes a member).
    env: { STORE_DEGRADED_AFTER: '3s', STORE_DOWN_AFTER: '6s' },
    directoryEnv: {
      PLACEMENT_GROUPS: String(GROUPS),
      PLACEMENT_REPLACE_AFTER: '600s',
      PLACEMENT_AUTO_BALANCE_AFTER: '2s',
      // The automatic moves are logged at info.
      LOG_LEVEL: 'info',
    },
  });
  client = new HaystackClient({ url: cluster.url });
  await waitFor(
    async () => ((await cluster.status()).placementGroups.length === GROUPS ? true : undefined),
    120_000,
    'placement groups',
  );
  for (let i = 0; i < 24; i++) {
    const data = bytes(2_000 + i * 97, i + 1);
    await client.upload(data, { id: `auto-${i}` });
    acked.set(`auto-${i}`, sha(data));
  }
}, 180_000);

afterAll(async () => {
  await client?.close();
  await cluster?.stop();
});

describe('automatic balance', () => {
  it('moves about a quarter of the memberships onto a 4th store added later, with no admin call', async () => {
    const dir = cluster.directories[0]!;
    const before = await cluster.status();
    // 16 groups × 3 members over 3 stores.
    for (const l of before.storeLoads) expect(l.memberships, l.storeId).toBe(16);

    const added = await cluster.addStore();
    const done = await waitFor(
      async () => {
        const s = await cluster.status();
        const mine = s.storeLoads.find((l) => l.storeId === 'store-3')?.memberships ?? 0;
        const settled = s.placementGroups.every((g) =>
          g.members.every((m) => m.state === PlacementMemberState.ACTIVE && !m.leaving),
        );
        return mine >= 11 && settled ? s : undefined;
      },
      240_000,
      'store-3 holding its share, every move finished',
      () => dir.logs().slice(-3000),
    );
    expect(dir.logs()).toContain('placement: automatic balance moves started');
    // 16 groups × 3 members over 4 stores: 12 each, give or take one.
    for (const l of done.storeLoads) {
      expect(l.memberships, l.storeId).toBeGreaterThanOrEqual(11);
      expect(l.memberships, l.storeId).toBeLessThanOrEqual(13);
    }
    for (const g of done.placementGroups) expect(new Set(g.members.map((m) => m.storeId)).size).toBe(3);
    // The new store holds every acknowledged blob of its groups (asked of the store itself).
    for (const [id, digest] of acked) {
      const g = done.placementGroups[placementGroupOf(id, GROUPS)]!;
      if (!g.members.some((m) => m.storeId === 'store-3')) continue;
      const n = (await storeClient(added.address).stat({ blobId: id })).needle;
      expect(n && Buffer.from(n.sha256).toString('hex'), id).toBe(digest);
    }
    for (const [id, digest] of acked) expect(sha((await client.download(id)).data), id).toBe(digest);
  }, 300_000);
});
