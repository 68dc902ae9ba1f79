import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService, StorageTier } from '../../gen/haystack/v1/blob_pb.js';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { type PlacementGroup, PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { placementGroupOf } from '../../internal/common/placement.js';
import { getShard } from '../../internal/ec/shard-client.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { coldTierEnv } from '../helpers/cold-tier-env.js';
import { adminTlsEnv, httpsGet } from '../helpers/pki.js';
import { waitFor } from '../helpers/replication-cluster.js';
import { bytes, type StoreClient, storeClient } from '../helpers/store-client.js';
import { exec } from '../helpers/tools.js';

/**
 * The cold tier's shards under operations, on real processes over mTLS (a
 * directory with placement groups, six stores, the manager with EC_ENABLED
 * RS(3,2), a gateway behind Envoy):
 * - GetClusterStatus (and `haystack stats`) show bytes per tier and the
 *   effective replication factor once blobs are cold;
 * - a deleted cold blob leaves its shards orphaned: they are collected after
 *   GC_GRACE_PERIOD while the committed shards of the other cold blobs stay;
 * - `haystack drain` of a store holding shards moves each of them to another
 *   store (ec_members updated), deletes them from it, and every cold blob reads
 *   byte-identical.
 */
const GROUPS = 2;
const K = 3;
const M = 2;
let cluster: Cluster;
let client: HaystackClient;
const blobs = new Map<string, Buffer>([
  ['ecd-a', bytes(10_000, 1)],
  ['ecd-b', bytes(200_003, 2)],
  ['ecd-c', bytes(65_536, 3)],
  ['ecd-d', bytes(1_234, 4)],
]);

const admin = (id: string): StoreClient =>
  storeClient(cluster.stores.find((p) => p.name === id)!.address, { security: cluster.security });
const blobService = () =>
  createClient(BlobService, cluster.transport(cluster.gateways[0]!.address, 'gateway'));

async function groupOf(blobId: string): Promise<PlacementGroup> {
  const g = (await cluster.status()).placementGroups[placementGroupOf(blobId, GROUPS)];
  if (!g) throw new Error(`no group for ${blobId}`);
  return g;
}

/** The live shards on a store, as "index~stripe". */
async function shardsOn(storeId: string): Promise<string[]> {
  const out: string[] = [];
  let token = '';
  do {
    const page = await admin(storeId).listShards({ pageToken: token }, { timeoutMs: 10_000 });
    for (const s of page.shards) out.push(`${s.index}~${s.stripeId}`);
    token = page.nextPageToken;
  } while (token);
  return out;
}

async function hasShard(storeId: string, blobId: string, i: number): Promise<boolean> {
  try {
    await getShard(admin(storeId), blobId, i, { signal: AbortSignal.timeout(10_000) });
    return true;
  } catch (err) {
    if (ConnectError.from(err).code === Code.NotFound) return false;
    throw err;
  }
}

async function cli(args: string[]) {
  return exec(process.execPath, ['dist/cmd/haystack.js', '--url', cluster.url, ...args], {
    env: { ...process.env, ...(await adminTlsEnv()) },
    timeoutMs: 600_000,
  });
}

async function readsIdentical(ids: Iterable<string>): Promise<void> {
  for (const id of ids) {
    const got = Buffer.from((await client.download(id)).data);
    expect(got.equals(blobs.get(id)!), id).toBe(true);
  }
}

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 1,
    stores: 6,
    gateways: 1,
    env: { PLACEMENT_GROUPS: String(GROUPS), PLACEMENT_REPLACE_AFTER: '600s' },
    directoryEnv: { STORE_DEGRADED_AFTER: '10s', STORE_DOWN_AFTER: '20s' },
    gatewayEnv: { CACHE_MAX_BLOB_SIZE: '0' },
    replicationEnv: coldTierEnv(
      { k: K, m: M, groups: GROUPS },
      { EC_WARM_RATE: '100000', GC_INTERVAL: '1s', GC_GRACE_PERIOD: '2s' },
    ),
  });
  client = new HaystackClient({ url: cluster.url });
  await waitFor(
    async () => ((await cluster.status()).placementGroups.length === GROUPS ? true : undefined),
    60_000,
    'placement groups',
  );
  for (const [id, data] of blobs) await client.upload(data, { id });
  for (const id of blobs.keys()) {
    await waitFor(
      async () =>
        (await blobService().stat({ blobId: id }, { timeoutMs: 10_000 })).blob?.tier ===
        StorageTier.ERASURE_CODED
          ? true
          : undefined,
      120_000,
      `${id} erasure-coded`,
      () => cluster.logs(),
    );
  }
}, 240_000);

afterAll(async () => {
  await cluster?.stop();
});

describe('cold-tier status', () => {
  it('GetClusterStatus and `haystack stats` show bytes per tier and the effective replication factor', async () => {
    // Each stripe's shards are the same size: shards / data shards = (k + m) / k exactly, once k is known.
    // Wait for every blob's shards in the heartbeats (the stores report them one beat apart).
    const logical = [...blobs.values()].reduce((n, b) => n + b.length, 0);
    const t = await waitFor(
      async () => {
        const tb = (await cluster.status()).tierBytes;
        return tb &&
          tb.shardLogicalBytes >= BigInt(logical) &&
          tb.shardBytes * BigInt(K) === tb.shardLogicalBytes * BigInt(K + M)
          ? tb
          : undefined;
      },
      60_000,
      'shard bytes in heartbeats',
    );
    // Data shards hold the blobs plus padding to 8 bytes per shard.
    expect(Number(t.shardLogicalBytes)).toBeGreaterThanOrEqual(logical);
    expect(Number(t.shardLogicalBytes)).toBeLessThan(logical + blobs.size * K * 8);
    expect(t.shardReplication).toBeCloseTo((K + M) / K, 6);
    // Only stubs are left as needles: the effective factor is close to the code's.
    expect(t.effectiveReplication).toBeGreaterThan((K + M) / K);
    expect(t.effectiveReplication).toBeLessThan(2);
    for (const g of (await cluster.status()).placementGroups) expect(g.ecDataShards).toBe(K);

    const json = await cli(['--json', 'stats']);
    expect(json.code, json.stderr).toBe(0);
    const doc = JSON.parse(json.stdout) as { tiers: { shardBytes: number; effectiveReplication: number } };
    expect(doc.tiers.shardBytes).toBeGreaterThan(0);
    expect(doc.tiers.effectiveReplication).toBeLessThan(2);
    const human = await cli(['stats']);
    expect(human.stdout).toMatch(/^tiers +replicas .*shards .*\(1\.67×\), effective replication \d\.\d\d×/m);
  }, 120_000);
});

describe('orphan shards', () => {
  it('a deleted cold blob’s shards are collected after the grace period; committed shards stay', async () => {
    const gone = 'ecd-d';
    const g = await groupOf(gone);
    const ec = g.ecMembers.map((m) => m.storeId);
    for (const [i, s] of ec.entries()) expect(await hasShard(s, gone, i)).toBe(true);
    const before = new Map<string, string[]>();
    for (const s of ec) before.set(s, await shardsOn(s));

    expect(await client.delete(gone)).toBe(true);
    blobs.delete(gone);
    await waitFor(
      async () => {
        for (const [i, s] of ec.entries()) if (await hasShard(s, gone, i)) return undefined;
        return true;
      },
      60_000,
      'the deleted blob’s shards collected',
      () => cluster.logs(),
    );
    // Every other shard is still there.
    for (const s of ec) {
      const left = await shardsOn(s);
      expect(left.sort()).toEqual(
        before
          .get(s)!
          .filter((k) => !k.endsWith(`~${gone}`))
          .sort(),
      );
    }
    await readsIdentical(blobs.keys());
    const m = (await httpsGet(`https://${cluster.replication!.address}/metrics`)).body;
    expect(m).toMatch(/^haystack_replication_orphan_shards_collected_total [1-9]/m);
  }, 120_000);
});

describe('haystack drain with erasure-coded shards', () => {
  it('moves every shard off the drained store, updates ec_members, deletes the old shards; reads byte-identical', async () => {
    const id = 'ecd-b';
    const g = await groupOf(id);
    const from = g.ecMembers[1]!.storeId;
    expect((await shardsOn(from)).length).toBeGreaterThan(0);
    const holding = (await cluster.status()).placementGroups.filter((x) =>
      x.ecMembers.some((m) => m.storeId === from),
    );

    // A drain is refused while too few stores are eligible (HEALTHY): on a loaded box a
    // heartbeat can lapse; start it once every store is healthy again, as an operator would.
    await waitFor(
      async () =>
        (await cluster.status()).stores.every((s) => s.health === StoreHealth.HEALTHY) ? true : undefined,
      60_000,
      'every store HEALTHY',
    );
    const drain = await cli(['--json', 'drain', from, '--wait', '--timeout', '5m']);
    expect(drain.code, drain.stderr).toBe(0);
    expect(JSON.parse(drain.stdout)).toMatchObject({
      store: from,
      memberships: 0,
      ecMemberships: 0,
      drained: true,
    });

    const s = await cluster.status();
    for (const before of holding) {
      const after = s.placementGroups[before.group]!;
      const stores = after.ecMembers.map((m) => m.storeId);
      expect(stores).not.toContain(from);
      expect(new Set(stores).size).toBe(K + M);
      expect(after.ecMembers.every((m) => m.state === PlacementMemberState.ACTIVE)).toBe(true);
      // Only the drained store's index changed, to a store that held none of the group's shards.
      const moved = before.ecMembers.findIndex((m) => m.storeId === from);
      for (const [i, m] of before.ecMembers.entries()) {
        if (i !== moved) expect(stores[i]).toBe(m.storeId);
      }
      expect(before.ecMembers.map((m) => m.storeId)).not.toContain(stores[moved]);
    }
    // Every cold blob's shards are on its group's EC members, none on the drained store.
    for (const blobId of blobs.keys()) {
      const eg = s.placementGroups[placementGroupOf(blobId, GROUPS)]!;
      for (const [i, m] of eg.ecMembers.entries()) expect(await hasShard(m.storeId, blobId, i)).toBe(true);
    }
    await waitFor(
      async () => ((await shardsOn(from)).length === 0 ? true : undefined),
      60_000,
      `no shard left on ${from}`,
    );
    await readsIdentical(blobs.keys());
    for (const blobId of blobs.keys()) {
      expect((await blobService().stat({ blobId })).blob?.tier).toBe(StorageTier.ERASURE_CODED);
    }
    // The heartbeat catches up: 0 shards reported, and `haystack stores` says so.
    await waitFor(
      async () =>
        (await cluster.status()).storeLoads.find((l) => l.storeId === from)?.shards === 0n ? true : undefined,
      60_000,
      'the drained store reports 0 shards',
    );
    // The stores' own gauges agree: none on the drained store, some on a shard store.
    const gauge = async (storeId: string) => {
      const text = (
        await httpsGet(`https://${cluster.stores.find((p) => p.name === storeId)!.address}/metrics`)
      ).body;
      return Number(/^haystack_store_shards (\d+)$/m.exec(text)?.[1]);
    };
    await waitFor(
      async () => ((await gauge(from)) === 0 ? true : undefined),
      90_000,
      'haystack_store_shards 0',
    );
    const holder = s.placementGroups[0]!.ecMembers[0]!.storeId;
    // Read in two calls, the gauge and the listing can straddle a shard move or collection: they agree once it settles.
    const agreed = await waitFor(
      async () => {
        const [g, listed] = [await gauge(holder), (await shardsOn(holder)).length];
        return g === listed ? g : undefined;
      },
      90_000,
      `haystack_store_shards of ${holder} equal to its listed shards`,
    );
    expect(agreed).toBeGreaterThan(0);
    const stores = await cli(['stores']);
    expect(stores.code, stores.stderr).toBe(0);
    expect(stores.stdout).toMatch(
      new RegExp(
        `^${from}\\s+drained\\s+0 group memberships \\(0 leaving\\), 0 extra replicas, 0 EC memberships \\(0 shards\\)`,
        'm',
      ),
    );
    const m = (await httpsGet(`https://${cluster.replication!.address}/metrics`)).body;
    expect(m).toMatch(/^haystack_replication_shard_repairs_total\{reason="drained"\} [1-9]/m);
    // Five stores left for groups of k + m = 5 EC members: draining another would strand a shard.
    const other = s.placementGroups[0]!.ecMembers[0]!.storeId;
    const refused = await cli(['drain', other]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      new RegExp(
        `FAILED_PRECONDITION: draining ${other} leaves 4 stores eligible .* need 5 \\(members, or k \\+ m EC members\\)`,
      ),
    );
  }, 600_000);
});
