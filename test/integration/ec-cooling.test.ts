import path from 'node:path';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService, StorageTier } from '../../gen/haystack/v1/blob_pb.js';
import { type PlacementGroup, PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { HAYSTACK_BIN } from '../../internal/cli/processes.js';
import { placementGroupOf } from '../../internal/common/placement.js';
import { shardKey } from '../../internal/common/shard-key.js';
import { getShard } from '../../internal/ec/shard-client.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { flipBytesOnDisk } from '../faults/harness.js';
import { Cluster } from '../helpers/cluster.js';
import { coldTierEnv } from '../helpers/cold-tier-env.js';
import { adminTlsEnv, httpsGet } from '../helpers/pki.js';
import { waitFor } from '../helpers/replication-cluster.js';
import { bytes, readBlob, type StoreClient, storeClient } from '../helpers/store-client.js';
import { exec } from '../helpers/tools.js';

/**
 * The replication manager's cold tier on real processes over mTLS with tokens
 * (docs/design/ec-tier.md): a directory with placement groups, six stores, the
 * manager (EC_ENABLED, RS(3,2), cold after 3 s) and a gateway behind Envoy.
 * Blobs nobody reads are encoded across five distinct stores and their full
 * replicas replaced by stubs; a read burst brings one back to full replicas (shards
 * deleted after), and it cools again once the reads stop; kill -9 of the manager
 * while a shard store or a member stalls mid-move leaves every blob readable
 * byte-identical with its full replicas or all of its shards; a flipped shard is
 * found by the shard scrub and rebuilt; a lost shard store is replaced and its
 * shards rebuilt from k others.
 */
const GROUPS = 4;
const K = 3;
const M = 2;
let cluster: Cluster;
let client: HaystackClient;
const blobs = new Map<string, Buffer>([
  ['cool-a', bytes(1, 1)],
  ['cool-b', bytes(65_536, 2)],
  ['cool-c', bytes(300_001, 3)],
  ['cool-d', bytes(1_048_579, 4)],
  ['cool-e', bytes(77_777, 5)],
]);

const storeIndex = (id: string) => Number(/^store-(\d+)$/.exec(id)?.[1]);
const proc = (id: string) => cluster.stores[storeIndex(id)]!;
const admin = (id: string): StoreClient => storeClient(proc(id).address, { security: cluster.security });
const blobService = () =>
  createClient(BlobService, cluster.transport(cluster.gateways[0]!.address, 'gateway'));

async function groupOf(blobId: string): Promise<PlacementGroup> {
  const g = (await cluster.status()).placementGroups[placementGroupOf(blobId, GROUPS)];
  if (!g) throw new Error(`no group for ${blobId}`);
  return g;
}

async function tierOf(blobId: string): Promise<StorageTier | undefined> {
  return (await blobService().stat({ blobId }, { timeoutMs: 10_000 })).blob?.tier;
}

const waitTier = (blobId: string, tier: StorageTier, ms = 90_000) =>
  waitFor(
    async () => ((await tierOf(blobId)) === tier ? true : undefined),
    ms,
    `${blobId} ${StorageTier[tier]}`,
    () => cluster.logs(),
  );

/** Whether store `storeId` holds shard `i` of the one-blob stripe `blobId` (NOT_FOUND: false). */
async function hasShard(storeId: string, blobId: string, i: number): Promise<boolean> {
  try {
    await getShard(admin(storeId), blobId, i, { signal: AbortSignal.timeout(10_000) });
    return true;
  } catch (err) {
    if (ConnectError.from(err).code === Code.NotFound) return false;
    throw err;
  }
}

/** True when the member holds the blob's stub (Stat answers a ColdRef). */
async function stubOn(storeId: string, blobId: string): Promise<boolean> {
  return (await admin(storeId).stat({ blobId }, { timeoutMs: 10_000 })).needle?.cold !== undefined;
}

async function downloads(blobId: string): Promise<void> {
  const got = await client.download(blobId);
  expect(Buffer.from(got.data).equals(blobs.get(blobId)!)).toBe(true);
}

/** An id of `group` not used yet. */
function idIn(group: number, prefix: string): string {
  for (let i = 0; ; i++) if (placementGroupOf(`${prefix}-${i}`, GROUPS) === group) return `${prefix}-${i}`;
}

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 1,
    // Six stores: k + m = 5 hold shards, one more takes a lost store's shards.
    stores: 6,
    gateways: 1,
    // A store whose heartbeat stream drops for a moment under CPU starvation is not replaced at once.
    env: { PLACEMENT_GROUPS: String(GROUPS), PLACEMENT_REPLACE_AFTER: '15s' },
    // A SIGSTOPped store stays HEALTHY through the longest stall below, even under CPU
    // starvation (a killed one is DOWN at once: its stream closes).
    // No automatic balance: its membership moves would race the cold tier's moves under test.
    directoryEnv: {
      STORE_DEGRADED_AFTER: '150s',
      STORE_DOWN_AFTER: '240s',
      PLACEMENT_AUTO_BALANCE_AFTER: '0',
    },
    gatewayEnv: { CACHE_MAX_BLOB_SIZE: '0' },
    // A WriteShard of the manager killed below, taken in by the stalled store only on
    // SIGCONT, can wait for request bytes that never come, holding its shard's lock
    // (docs/design/ec-tier.md, "Open"): the store ends it after this instead of 60 s.
    storeEnv: { LISTEN_REQUEST_IDLE_TIMEOUT: '15s' },
    // Stores report their reads' heat, as deploy/ and `haystack dev` wire them.
    storeHeat: true,
    replicationEnv: coldTierEnv(
      { k: K, m: M, groups: GROUPS },
      {
        // One verification read makes ~30 reads/min for a second: far below the warm line.
        EC_WARM_RATE: '60',
        // The window in which a move waits on a stalled store (the crash tests kill the manager inside it).
        COPY_TIMEOUT: '60s',
        SCRUB_INTERVAL: '2s',
      },
    ),
  });
  client = new HaystackClient({ url: cluster.url });
  await waitFor(
    async () => ((await cluster.status()).placementGroups.length === GROUPS ? true : undefined),
    60_000,
    'placement groups',
  );
  for (const [id, data] of blobs) await client.upload(data, { id });
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
});

describe('the cooling loop', () => {
  it('encodes blobs nobody reads: k + m shards on distinct stores committed in the directory, a stub on every member, reads byte-identical', {
    timeout: 180_000,
  }, async () => {
    for (const id of blobs.keys()) await waitTier(id, StorageTier.ERASURE_CODED);
    for (const id of blobs.keys()) {
      const g = await groupOf(id);
      const ec = g.ecMembers.map((m) => m.storeId);
      expect(ec).toHaveLength(K + M);
      expect(new Set(ec).size).toBe(K + M);
      for (const m of g.members) expect(await stubOn(m.storeId, id)).toBe(true);
      for (const [i, s] of ec.entries()) expect(await hasShard(s, id, i)).toBe(true);
      const info = (await blobService().stat({ blobId: id })).blob;
      expect([info?.dataShards, info?.parityShards, info?.replicaCount]).toEqual([K, M, 0]);
      await downloads(id);
    }
  });

  it('`haystack status ID` shows the tier, the code and each shard’s store', {
    timeout: 60_000,
  }, async () => {
    const id = 'cool-e';
    const g = await groupOf(id);
    const run = await exec(process.execPath, [HAYSTACK_BIN, 'status', id, '--json'], {
      env: { ...process.env, HAYSTACK_URL: cluster.url, ...(await adminTlsEnv()) },
      timeoutMs: 60_000,
    });
    expect(run.code, run.stderr).toBe(0);
    const st = JSON.parse(run.stdout) as {
      replication: { tier: string; code: string; stripe: string; shards: { index: number; store: string }[] };
    };
    expect(st.replication).toMatchObject({ tier: 'erasure-coded', code: `RS(${K},${M})`, stripe: id });
    expect(st.replication.shards.map((x) => x.store)).toEqual(g.ecMembers.map((m) => m.storeId));
    const text = await exec(process.execPath, [HAYSTACK_BIN, 'status', id], {
      env: { ...process.env, HAYSTACK_URL: cluster.url, ...(await adminTlsEnv()) },
      timeoutMs: 60_000,
    });
    expect(text.stdout).toMatch(new RegExp(`tier +erasure-coded RS\\(${K},${M}\\)`));
    expect(text.stdout).toMatch(/shard 4 /);
  });

  it('a read burst re-materialises full replicas (shards deleted only after), and the blob cools again when reads stop', {
    timeout: 240_000,
  }, async () => {
    const id = 'cool-c';
    const data = blobs.get(id)!;
    let reading = true;
    const readers = Array.from({ length: 4 }, async () => {
      while (reading) await downloads(id);
    });
    try {
      await waitTier(id, StorageTier.REPLICATED);
    } finally {
      reading = false;
      await Promise.all(readers);
    }
    const g = await groupOf(id);
    for (const m of g.members) {
      expect(await stubOn(m.storeId, id)).toBe(false);
      expect((await readBlob(admin(m.storeId), id)).equals(data)).toBe(true);
    }
    await waitFor(
      async () => {
        for (const [i, s] of g.ecMembers.entries()) if (await hasShard(s.storeId, id, i)) return undefined;
        return true;
      },
      60_000,
      'the shards of the re-materialised blob deleted',
    );
    // Nobody reads it now: below EC_COLD_RATE for EC_COLD_AFTER, encoded again.
    await waitTier(id, StorageTier.ERASURE_CODED, 120_000);
    await downloads(id);
  });
});

describe('kill -9 of the manager mid-move', () => {
  it('during encoding (a shard store stalled): the blob keeps its full replicas and no stub; after restart it is encoded', {
    timeout: 240_000,
  }, async () => {
    const g0 = await groupOf('cool-c');
    const id = idIn(g0.group, 'crash-encode');
    const data = bytes(200_003, 9);
    blobs.set(id, data);
    // A shard store that is not a member of the group: uploads and reads never wait on it.
    const stalled = g0.ecMembers.map((m) => m.storeId).find((s) => !g0.members.some((m) => m.storeId === s))!;
    const shardIndex = g0.ecMembers.findIndex((m) => m.storeId === stalled);
    const other = g0.ecMembers.findIndex((m) => m.storeId !== stalled);
    proc(stalled).child.kill('SIGSTOP');
    try {
      await client.upload(data, { id });
      // The manager is mid-encoding: one shard durable elsewhere, the stalled one pending.
      await waitFor(
        async () => ((await hasShard(g0.ecMembers[other]!.storeId, id, other)) ? true : undefined),
        90_000,
        'a shard written while another store stalls',
        () => cluster.logs(),
      );
      await cluster.replication?.kill();
      for (const m of g0.members) expect(await stubOn(m.storeId, id)).toBe(false);
      expect(await tierOf(id)).toBe(StorageTier.REPLICATED);
      await downloads(id);
    } finally {
      proc(stalled).child.kill('SIGCONT');
    }
    expect(shardIndex).toBeGreaterThanOrEqual(0);
    await cluster.startReplication();
    await waitTier(id, StorageTier.ERASURE_CODED, 120_000);
    // The group as it is now (a store stalled for long under load may have been replaced
    // meanwhile). The stubs go to the members in parallel: the tier shows as soon as the
    // member asked has its stub, the others' may still be on their way.
    const g1 = await waitFor(
      async () => {
        const g = await groupOf(id);
        for (const m of g.members) if (!(await stubOn(m.storeId, id))) return undefined;
        return g;
      },
      60_000,
      `a stub of ${id} on every member`,
      () => cluster.logs(),
    );
    for (const [i, s] of g1.ecMembers.entries()) expect(await hasShard(s.storeId, id, i)).toBe(true);
    await downloads(id);
  });

  it('during re-materialisation (a member stalled): every shard stays until all members hold the full needle; nothing lost', {
    timeout: 300_000,
  }, async () => {
    const id = 'cool-b';
    await waitTier(id, StorageTier.ERASURE_CODED);
    const g = await groupOf(id);
    const first = g.members[0]!.storeId;
    const stalled = g.members[g.members.length - 1]!.storeId;
    proc(stalled).child.kill('SIGSTOP');
    let reading = true;
    const readers = Array.from({ length: 6 }, async () => {
      while (reading) await downloads(id).catch(() => {});
    });
    try {
      // Warming has written the full needle on the first member and waits on the stalled one.
      await waitFor(
        async () => ((await stubOn(first, id)) ? undefined : true),
        120_000,
        'a full needle back on the first member',
        () => cluster.logs(),
      );
      await cluster.replication?.kill();
      reading = false;
      await Promise.all(readers);
      // Nothing deleted yet: every shard is still there.
      for (const [i, s] of g.ecMembers.entries()) {
        if (s.storeId !== stalled) expect(await hasShard(s.storeId, id, i)).toBe(true);
      }
    } finally {
      reading = false;
      proc(stalled).child.kill('SIGCONT');
    }
    await Promise.all(readers);
    for (const [i, s] of g.ecMembers.entries()) expect(await hasShard(s.storeId, id, i)).toBe(true);
    await downloads(id);
    await cluster.startReplication();
    // The members converge (anti-entropy on the newest stamp, or the blob cools again): readable throughout.
    await waitFor(
      async () => {
        const stubs = await Promise.all(g.members.map((m) => stubOn(m.storeId, id)));
        return stubs.every((s) => s === stubs[0]) ? true : undefined;
      },
      120_000,
      'members agreeing on the blob’s tier',
      () => cluster.logs(),
    );
    await downloads(id);
  });
});

async function managerMetric(name: string, label: string): Promise<number> {
  const r = await httpsGet(`https://${cluster.replication?.address}/metrics`);
  const line = r.body.split('\n').find((l) => l.startsWith(name) && l.includes(label));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('shard repair', () => {
  it('the shard scrub finds a flipped byte in a shard on disk and rebuilds it from k others', {
    timeout: 240_000,
  }, async () => {
    const id = 'cool-d';
    await waitTier(id, StorageTier.ERASURE_CODED);
    const g = await groupOf(id);
    const holder = g.ecMembers[1]!.storeId;
    await flipBytesOnDisk(path.join(cluster.dataDir, holder, 'ec'), shardKey(id, 1));
    // The shard scrub (SCRUB_INTERVAL) finds it (the store answers DATA_LOSS) and writes it again.
    await waitFor(
      async () => ((await hasShard(holder, id, 1)) ? true : undefined),
      // The scrub leaves a store alone for 60 s after a failed read (the stall tests above
      // cause some) and shares one lane with the moves: minutes, not seconds, on a busy box.
      210_000,
      'the corrupt shard rebuilt',
      () => cluster.logs(),
    );
    expect(
      await managerMetric('haystack_replication_shard_repairs_total', 'reason="corrupt"'),
    ).toBeGreaterThanOrEqual(1);
    await downloads(id);
  });

  it('kill -9 of a shard store: the directory swaps in another, every shard is rebuilt there, then it is ACTIVE', {
    timeout: 300_000,
  }, async () => {
    const id = 'cool-d';
    const g = await groupOf(id);
    const lost = g.ecMembers[0]!.storeId;
    await proc(lost).kill();
    const cold = [...blobs.keys()].filter((b) => placementGroupOf(b, GROUPS) === g.group);
    const healed = await waitFor(
      async () => {
        const now = await groupOf(id);
        const ok = now.ecMembers.every((m) => m.storeId !== lost && m.state === PlacementMemberState.ACTIVE);
        return ok ? now : undefined;
      },
      270_000,
      'the lost shard store replaced and its shards rebuilt',
      () => cluster.logs(),
    );
    const fresh = healed.ecMembers[0]!.storeId;
    expect(g.ecMembers.some((m) => m.storeId === fresh)).toBe(false);
    for (const b of cold) {
      if ((await tierOf(b)) !== StorageTier.ERASURE_CODED) continue;
      expect(await hasShard(fresh, b, 0)).toBe(true);
      await downloads(b);
    }
    expect(
      await managerMetric('haystack_replication_shard_repairs_total', 'reason="rebuilt"'),
    ).toBeGreaterThanOrEqual(1);
  });
});
