import { createHash } from 'node:crypto';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BlobInfo, BlobService, StorageTier } from '../../gen/haystack/v1/blob_pb.js';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { type PlacementGroup, PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { placementGroupOf } from '../../internal/common/placement.js';
import { DirectoryClient } from '../../internal/directory/client.js';
import { coolBlob } from '../../internal/ec/cooling.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { Cluster } from '../helpers/cluster.js';
import { httpsGet, securityOf } from '../helpers/pki.js';
import { waitFor } from '../helpers/replication-cluster.js';
import { bytes, type StoreClient, storeClient } from '../helpers/store-client.js';
import { authFetch } from '../helpers/tokens.js';

/**
 * The directory's EC members and gateway reads of cold blobs, on real processes
 * over mTLS with tokens (docs/design/ec-tier.md): a directory with placement
 * groups, five stores, a gateway behind Envoy. The test plays the replication
 * manager (its certificate and a lease term): it sets a group's ec_members with
 * UpdatePlacement and cools a blob RS(3,2) with coolBlob; clients then read it
 * through Envoy — Download, GET /blobs/{id}, Range — systematic while every shard
 * store is up, decoded after kill -9 of two of them.
 */
const GROUPS = 4;
const TERM = 1n;
const code = { k: 3, m: 2 };
let cluster: Cluster;
let client: HaystackClient;
let manager: TransportSecurity;
let managerDirectory: DirectoryClient;
const data = bytes(300_001, 16);
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const blobId = 'cold-photo-1';
let group: PlacementGroup;
/** Store ids in the order they take shards 0..4. */
let ecOrder: string[] = [];

const storeIndex = (id: string) => Number(/^store-(\d+)$/.exec(id)?.[1]);
const address = (id: string) => cluster.stores[storeIndex(id)]?.address as string;
const asManager = (id: string): StoreClient => storeClient(address(id), { security: manager });

async function groupNow(): Promise<PlacementGroup> {
  const s = await cluster.status();
  const g = s.placementGroups[placementGroupOf(blobId, GROUPS)];
  if (!g) throw new Error('no group');
  return g;
}

async function gatewayMetric(name: string, label: string): Promise<number> {
  const r = await httpsGet(`https://${cluster.gateways[0]?.address}/metrics`);
  const line = r.body.split('\n').find((l) => l.startsWith(name) && l.includes(label));
  return line ? Number(line.split(' ').pop()) : 0;
}

async function httpRange(from: number, to: number): Promise<{ status: number; body: Buffer }> {
  const res = await authFetch(`${cluster.url}/blobs/${blobId}`, {
    headers: { range: `bytes=${from}-${to}` },
  });
  return { status: res.status, body: Buffer.from(await res.arrayBuffer()) };
}

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 1,
    stores: 5,
    gateways: 1,
    replication: false,
    env: {
      PLACEMENT_GROUPS: String(GROUPS),
      STORE_DEGRADED_AFTER: '1s',
      STORE_DOWN_AFTER: '2s',
      PLACEMENT_REPLACE_AFTER: '600s',
    },
    // Nothing cached: every read goes to the shards.
    gatewayEnv: { CACHE_MAX_BLOB_SIZE: '0' },
  });
  manager = await securityOf({ role: 'replication', id: 'cold-reads-manager' });
  managerDirectory = new DirectoryClient({
    addresses: cluster.directoryAddrs.split(','),
    deadlineMs: 20_000,
    security: manager,
  });
  client = new HaystackClient({ url: cluster.url });
  await waitFor(
    async () => ((await cluster.status()).placementGroups.length === GROUPS ? true : undefined),
    60_000,
    'placement groups',
  );
  const stored = await client.upload(data, { id: blobId, contentType: 'image/jpeg' });
  expect(stored.sha256).toBe(sha(data));
  group = await groupNow();
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
});

describe('the directory knows a group’s EC members', () => {
  it('UpdatePlacement sets ec_members; they are committed, pushed on WatchMetadata and kept by members-only changes', {
    timeout: 60_000,
  }, async () => {
    const members = group.members.map((m) => m.storeId);
    const others = cluster.stores.map((_, i) => `store-${i}`).filter((id) => !members.includes(id));
    // Shards 0 and 1 on two of the group's members, so losing them also loses two stubs.
    ecOrder = [members[0], members[1], ...others, members[2]] as string[];
    const ecMembers = ecOrder.map((storeId) => ({ storeId, state: PlacementMemberState.ACTIVE }));

    const twice = await managerDirectory
      .updatePlacement({
        group: group.group,
        expectedEpoch: group.epoch,
        members: group.members,
        ecMembers: [...ecMembers.slice(0, 4), ecMembers[0]!],
      })
      .catch((e: unknown) => ConnectError.from(e));
    expect(twice).toBeInstanceOf(ConnectError);
    expect((twice as ConnectError).code).toBe(Code.InvalidArgument);
    expect((twice as ConnectError).rawMessage).toMatch(/listed twice/);

    // k must leave room for parity among the EC members.
    const noParity = await managerDirectory
      .updatePlacement({
        group: group.group,
        expectedEpoch: group.epoch,
        members: group.members,
        ecMembers,
        ecDataShards: ecMembers.length,
      })
      .catch((e: unknown) => ConnectError.from(e));
    expect((noParity as ConnectError).code).toBe(Code.InvalidArgument);
    expect((noParity as ConnectError).rawMessage).toMatch(
      /ec_data_shards 5 leaves no parity among 5 EC members/,
    );

    const res = await managerDirectory.updatePlacement({
      group: group.group,
      expectedEpoch: group.epoch,
      members: group.members,
      ecMembers,
      ecDataShards: 3,
    });
    expect(res.group?.ecMembers.map((m) => m.storeId)).toEqual(ecOrder);
    expect(res.group?.ecDataShards).toBe(3);
    const g = await groupNow();
    expect(g.ecMembers.map((m) => m.storeId)).toEqual(ecOrder);

    // A members-only change (as backfill sends) keeps them.
    const again = await managerDirectory.updatePlacement({
      group: g.group,
      expectedEpoch: g.epoch,
      members: g.members,
    });
    expect(again.group?.ecMembers.map((m) => m.storeId)).toEqual(ecOrder);
    expect(again.group?.ecDataShards).toBe(3);

    // Followers of the log (gateways, managers) get them on the metadata stream.
    const ctl = new AbortController();
    let seen: string[] = [];
    for await (const msg of managerDirectory.watchMetadata(
      { fromIndex: 0n, watcherId: 'ec-test' },
      ctl.signal,
    )) {
      const groups =
        msg.msg.case === 'snapshot'
          ? msg.msg.value.placementGroups
          : msg.msg.case === 'entries'
            ? msg.msg.value.entries.flatMap((e) =>
                e.change.case === 'placementChanged' ? e.change.value.groups : [],
              )
            : [];
      for (const x of groups)
        if (x.group === g.group && x.ecMembers.length > 0) seen = x.ecMembers.map((m) => m.storeId);
      if (seen.length > 0) break;
    }
    ctl.abort();
    expect(seen).toEqual(ecOrder);
    group = await groupNow();
  });
});

describe('gateways read cold blobs from their shards', () => {
  it('a cooled blob reads byte-identical by Download, GET and Range, from the data shards alone', {
    timeout: 90_000,
  }, async () => {
    const cooled = await coolBlob(blobId, code, {
      members: group.members.map((m) => asManager(m.storeId)),
      ecStores: ecOrder.map(asManager),
      term: TERM,
    });
    expect(cooled.layout.k).toBe(3);

    const blobs = createClient(BlobService, cluster.transport(cluster.gateways[0]!.address, 'gateway'));
    const info = (await blobs.stat({ blobId })).blob;
    expect(info?.tier).toBe(StorageTier.ERASURE_CODED);
    expect([info?.dataShards, info?.parityShards]).toEqual([3, 2]);
    expect(info?.sha256).toBe(sha(data));
    // Listings answer the blob's facts, not its stub's.
    const listed: BlobInfo[] = [];
    let token = '';
    do {
      const page = await blobs.list({ prefix: 'cold-photo', pageToken: token });
      listed.push(...page.blobs);
      token = page.nextPageToken;
    } while (token);
    expect(listed.map((b) => [b.blobId, b.size, b.contentType, b.tier])).toEqual([
      [blobId, BigInt(data.length), 'image/jpeg', StorageTier.ERASURE_CODED],
    ]);

    const before = await gatewayMetric('haystack_gateway_cold_reads_total', 'path="systematic"');
    const got = await client.download(blobId);
    expect(Buffer.from(got.data).equals(data)).toBe(true);
    const res = await authFetch(`${cluster.url}/blobs/${blobId}`);
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).equals(data)).toBe(true);
    // A range inside shard 1, and one straddling shards 0..2.
    const shard = cooled.layout.shardSize;
    for (const [from, to] of [
      [shard + 10, shard + 5000],
      [shard - 7, 2 * shard + 3],
    ] as const) {
      const r = await httpRange(from, to);
      expect(r.status).toBe(206);
      expect(r.body.equals(data.subarray(from, to + 1))).toBe(true);
    }
    const part = await client.download(blobId, { offset: 12_345, length: 100_000 });
    expect(Buffer.from(part.data).equals(data.subarray(12_345, 112_345))).toBe(true);
    const after = await gatewayMetric('haystack_gateway_cold_reads_total', 'path="systematic"');
    expect(after - before).toBeGreaterThanOrEqual(5);
    expect(await gatewayMetric('haystack_gateway_cold_reads_total', 'path="degraded"')).toBe(0);
  });

  it('after kill -9 of two shard stores (two data shards, two stubs) it still reads byte-identical, decoded', {
    timeout: 120_000,
  }, async () => {
    for (const id of ecOrder.slice(0, 2)) await cluster.stores[storeIndex(id)]?.kill();
    // Reads work before and after the directory marks them DOWN.
    const first = await client.download(blobId);
    expect(Buffer.from(first.data).equals(data)).toBe(true);
    await waitFor(
      async () => {
        const s = await cluster.status();
        const down = s.stores.filter(
          (x) => ecOrder.slice(0, 2).includes(x.storeId) && x.health === StoreHealth.DOWN,
        );
        return down.length === 2 ? true : undefined;
      },
      60_000,
      'the two stores DOWN',
    );
    const got = await client.download(blobId);
    expect(Buffer.from(got.data).equals(data)).toBe(true);
    const r = await httpRange(5, 150_000);
    expect(r.status).toBe(206);
    expect(r.body.equals(data.subarray(5, 150_001))).toBe(true);
    expect(
      await gatewayMetric('haystack_gateway_cold_reads_total', 'path="degraded"'),
    ).toBeGreaterThanOrEqual(3);
  });

  it('a third lost shard store leaves fewer than k shards: UNAVAILABLE naming the shards, never wrong bytes', {
    timeout: 60_000,
  }, async () => {
    const third = ecOrder[2] as string;
    await cluster.stores[storeIndex(third)]?.kill();
    const blobs = createClient(BlobService, cluster.transport(cluster.gateways[0]!.address, 'gateway'));
    const err = await (async () => {
      for await (const _ of blobs.download({ blobId }, { timeoutMs: 30_000 })) {
        // no bytes expected
      }
    })().catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect((err as ConnectError).rawMessage).toMatch(/shards needed/);
  });
});
