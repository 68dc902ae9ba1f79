import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PlacementGroup, PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import type { NeedleFacts } from '../../gen/haystack/v1/store_pb.js';
import { placementGroupOf } from '../../internal/common/placement.js';
import { pacedReads } from '../helpers/paced-reads.js';
import { ReplicationCluster, sha256, waitFor } from '../helpers/replication-cluster.js';
import { bytes, readBlob, storeClient, writeBlob } from '../helpers/store-client.js';

/**
 * The replication manager in placement mode against real processes: Redis, a
 * directory with placement groups, five stores (reporting their reads to the
 * managers) and two managers sharing the lease. Blobs are written the way a
 * gateway does in placement mode: to the group's first member, which forwards to
 * the others, with the directory leader's term.
 */

const GROUPS = 4;
let rc: ReplicationCluster;

async function groupOf(id: string): Promise<PlacementGroup> {
  const s = await rc.cluster.status();
  const g = s.placementGroups[placementGroupOf(id, GROUPS)];
  if (!g) throw new Error(`no group for ${id}`);
  return g;
}

const address = (storeId: string) => rc.cluster.stores[rc.storeIndex(storeId)]!.address;

/** Writes a blob to `only` (default: every member of its group, the first forwarding). */
async function put(id: string, data: Uint8Array, only?: string[]): Promise<void> {
  const s = await rc.cluster.status();
  const g = s.placementGroups[placementGroupOf(id, GROUPS)]!;
  const [first, ...rest] = only ?? g.members.map((m) => m.storeId);
  await writeBlob(storeClient(address(first!)), id, data, {
    sha256: sha256(data),
    forwardTo: rest.map((storeId) => ({ storeId, address: address(storeId) })),
    term: s.term,
  });
}

async function stat(storeId: string, id: string): Promise<NeedleFacts | undefined> {
  try {
    return (await storeClient(address(storeId)).stat({ blobId: id, includeDeleted: true })).needle;
  } catch {
    return undefined;
  }
}

/** An id in `group` with the given prefix. */
function idIn(group: number, prefix: string): string {
  for (let i = 0; ; i++) if (placementGroupOf(`${prefix}-${i}`, GROUPS) === group) return `${prefix}-${i}`;
}

beforeAll(async () => {
  rc = await ReplicationCluster.start({
    stores: 5,
    env: {
      PLACEMENT_GROUPS: String(GROUPS),
      PLACEMENT_REPLACE_AFTER: '600s',
      // No store is stopped here: a late heartbeat on a loaded machine must not demote members.
      STORE_DEGRADED_AFTER: '3s',
      STORE_DOWN_AFTER: '6s',
      EXTRA_REMOVAL_GRACE: '1s',
      ANTI_ENTROPY_INTERVAL: '2s',
      ANTI_ENTROPY_GROUPS: String(GROUPS),
      ANTI_ENTROPY_SETTLE: '1s',
    },
  });
  await waitFor(
    async () => {
      const s = await rc.cluster.status();
      return s.placementGroups.length === GROUPS ? true : undefined;
    },
    60_000,
    'placement groups',
  );
  await rc.activeManager();
}, 120_000);

afterAll(async () => {
  await rc?.stop();
});

describe('replication manager with placement groups', () => {
  it('a hot blob gains extra replicas with the members’ stamp, and loses them once it cools', async () => {
    const id = 'hot-photo';
    const data = bytes(8_000, 3);
    await put(id, data);
    const g = await groupOf(id);
    const members = g.members.map((m) => m.storeId);
    const stamp = (await stat(members[0]!, id))?.writtenAtMs;
    const m = rc.manager(await rc.activeManager());
    // Hammer it well above HIGH_ACCESS_THRESHOLD (1500/min) through one member's reads:
    // 60/s on one client, up to 8 in flight. (A loop of one read at a time, each on a new
    // connection and TLS handshake, fell below the threshold at load 9-10.)
    const member = storeClient(address(members[0]!));
    const hammer = pacedReads(() => readBlob(member, id), 60, 8);
    let extras: string[] = [];
    let factor = 0;
    try {
      await waitFor(
        async () => {
          const st = await m.getBlobStatus({ blobId: id });
          extras = st.replicas.map((r) => r.storeId).filter((s) => !members.includes(s));
          return extras.length === 2 ? true : undefined;
        },
        60_000,
        'two extra replicas',
        () => rc.logs(),
      );
      // The stores' bytes per group show both extra copies (still hot: reads go on):
      // the only blob, on 3 members and 2 extra stores, is 5 copies of one.
      factor = await waitFor(
        async () => {
          const t = (await rc.cluster.status()).tierBytes;
          return t?.replicaMeasured && t.replicaReplication > 4.5 ? t.replicaReplication : undefined;
        },
        60_000,
        'replica factor 5 (above the group size, 3)',
        () => rc.logs(),
      );
    } finally {
      await hammer.stop();
    }
    for (const s of extras) {
      const n = await stat(s, id);
      expect(n?.deleted).toBe(false);
      expect(n?.writtenAtMs).toBe(stamp);
      expect(Buffer.from(n?.sha256 ?? []).equals(sha256(data))).toBe(true);
    }
    expect((await rc.cluster.status()).extraReplicaBlobs).toBe(1n);
    expect(factor).toBeCloseTo(5, 6);
    // Cooled: unlisted, then tombstoned on the extra stores (tombstones are no replica).
    await waitFor(
      async () => {
        const st = await m.getBlobStatus({ blobId: id });
        if (st.replicas.length !== 3) return undefined;
        for (const s of extras) if (!(await stat(s, id))?.deleted) return undefined;
        const t = (await rc.cluster.status()).tierBytes;
        return t?.replicaMeasured && t.replicaReplication === 3 && t.replicaExtraBytes === 0n
          ? true
          : undefined;
      },
      60_000,
      'extras removed and tombstoned',
      () => rc.logs(),
    );
    for (const s of members) expect((await stat(s, id))?.deleted).toBe(false);
  }, 150_000);

  it('a needle written to one member only reaches the others by anti-entropy, with its stamp', async () => {
    const id = 'half-written';
    const g = await groupOf(id);
    const [only, ...others] = g.members.map((mm) => mm.storeId);
    await put(id, bytes(4_000, 9), [only!]);
    const want = await stat(only!, id);
    await waitFor(
      async () => {
        for (const s of others) if ((await stat(s, id))?.writtenAtMs !== want?.writtenAtMs) return undefined;
        return true;
      },
      60_000,
      'the other members to hold it',
      () => rc.logs(),
    );
    for (const s of others) expect((await stat(s, id))?.deleted).toBe(false);
  }, 90_000);

  it('a JOINING member is backfilled (live needles and tombstones, same stamps) and becomes ACTIVE', async () => {
    const group = 2;
    const g = (await rc.cluster.status()).placementGroups[group]!;
    const members = g.members.map((mm) => mm.storeId);
    const outsider = rc.cluster.stores.map((p) => p.name).find((n) => !members.includes(n))!;
    const ids = Array.from({ length: 12 }, (_, i) => idIn(group, `fill-${i}`));
    for (const [i, id] of ids.entries()) await put(id, bytes(2_000 + i * 101, i));
    // One deleted before the store joins: the tombstone must reach it too.
    const s0 = await rc.cluster.status();
    for (const mm of members) await storeClient(address(mm)).delete({ blobId: ids[0]!, term: s0.term });
    await rc.managerDirectory.updatePlacement({
      group,
      expectedEpoch: g.epoch,
      members: [...g.members, { storeId: outsider, state: PlacementMemberState.JOINING }],
    });
    await waitFor(
      async () => {
        const now = (await rc.cluster.status()).placementGroups[group]!;
        return now.members.find((mm) => mm.storeId === outsider)?.state === PlacementMemberState.ACTIVE
          ? true
          : undefined;
      },
      60_000,
      `${outsider} ACTIVE in group ${group}`,
      () => rc.logs(),
    );
    for (const id of ids) {
      // The newest needle among the members (each stamped its own tombstone of ids[0]).
      let want: NeedleFacts | undefined;
      for (const mm of members) {
        const n = await stat(mm, id);
        if (n && (!want || n.writtenAtMs > want.writtenAtMs)) want = n;
      }
      const got = await stat(outsider, id);
      expect(got?.writtenAtMs).toBe(want?.writtenAtMs);
      expect(got?.deleted).toBe(want?.deleted);
    }
    expect((await stat(outsider, ids[0]!))?.deleted).toBe(true);
  }, 90_000);
});
