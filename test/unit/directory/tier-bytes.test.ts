import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import {
  PlacementGroupSchema,
  PlacementMemberSchema,
  PlacementMemberState,
  StoreRecordSchema,
} from '../../../gen/haystack/v1/metadata_pb.js';
import { tierBytes } from '../../../internal/directory/tier-bytes.js';

const GROUPS = 2;
const members = (ids: string[]) =>
  ids.map((storeId) => create(PlacementMemberSchema, { storeId, state: PlacementMemberState.ACTIVE }));
const store = (storeId: string, live: bigint, byIndex: bigint[] = [], perGroup?: Record<number, bigint>) =>
  create(StoreRecordSchema, {
    storeId,
    volumes: [{ volumeId: 1, liveBytes: live }],
    ...(perGroup
      ? {
          placementBytes: {
            groupCount: GROUPS,
            groups: Object.entries(perGroup).map(([g, bytes]) => ({ group: Number(g), bytes })),
          },
        }
      : {}),
    shards: {
      count: BigInt(byIndex.length),
      bytes: byIndex.reduce((a, b) => a + b, 0n),
      bytesByIndex: byIndex,
    },
  });

/** Group 0 on a, b, c, with RS(2,1) shards on the same three stores. */
const rs21OnABC = () =>
  create(PlacementGroupSchema, {
    group: 0,
    members: members(['a', 'b', 'c']),
    ecMembers: members(['a', 'b', 'c']),
    ecDataShards: 2,
  });

describe('bytes per tier', () => {
  it('replicas count over the replicas per group; shards count their data shards as logical bytes', () => {
    // RS(2,1) on a, b, c: 100 bytes of shard per index; 3 replicas of 300 logical bytes.
    const g = rs21OnABC();
    const t = tierBytes(
      [store('a', 300n, [100n]), store('b', 300n, [0n, 100n]), store('c', 300n, [0n, 0n, 100n])],
      [g],
      3,
    );
    expect(t.replicaBytes).toBe(900n);
    expect(t.replicaLogicalBytes).toBe(300n);
    expect(t.shardBytes).toBe(300n);
    expect(t.shardLogicalBytes).toBe(200n);
    expect(t.replicaReplication).toBe(3);
    expect(t.shardReplication).toBe(1.5);
    expect(t.effectiveReplication).toBe(1200 / 500);
  });

  it('shards on a store no group lists at that index use the most common k; with none known, no logical bytes', () => {
    const g = create(PlacementGroupSchema, {
      group: 0,
      members: members(['a']),
      ecMembers: members(['a', 'b', 'c', 'd']),
      ecDataShards: 3,
    });
    expect(tierBytes([store('x', 0n, [10n, 10n, 10n, 10n])], [g], 3).shardLogicalBytes).toBe(30n);
    const unknown = create(PlacementGroupSchema, { group: 0, ecMembers: members(['a', 'b']) });
    const t = tierBytes([store('a', 0n, [10n])], [unknown], 3);
    expect(t.shardLogicalBytes).toBe(0n);
    expect(t.shardReplication).toBe(0);
    expect(tierBytes([], [], 3).effectiveReplication).toBe(0);
  });

  it('measured: extra replicas of a hot blob raise the replica factor above the group size', () => {
    // Group 0 on a, b, c (1000 bytes each); d holds a 100-byte extra copy of one hot blob of it.
    const g0 = create(PlacementGroupSchema, { group: 0, members: members(['a', 'b', 'c']) });
    const g1 = create(PlacementGroupSchema, { group: 1, members: members(['b', 'c', 'd']) });
    const stores = [
      store('a', 1000n, [], { 0: 1000n }),
      store('b', 1500n, [], { 0: 1000n, 1: 500n }),
      store('c', 1500n, [], { 0: 1000n, 1: 500n }),
      store('d', 600n, [], { 0: 100n, 1: 500n }),
    ];
    const t = tierBytes(stores, [g0, g1], 3, GROUPS);
    expect(t.replicaMeasured).toBe(true);
    expect(t.replicaBytes).toBe(4600n);
    expect(t.replicaLogicalBytes).toBe(1500n);
    expect(t.replicaExtraBytes).toBe(100n);
    expect(t.replicaReplication).toBe(4600 / 1500);
    expect(t.replicaReplication).toBeGreaterThan(3);
    // The estimate cannot tell: it reads exactly the group size.
    expect(tierBytes(stores, [g0, g1], 3).replicaReplication).toBeCloseTo(3, 2);
  });

  it('measured: one copy per group is its largest (a member still being backfilled holds less)', () => {
    const g = create(PlacementGroupSchema, { group: 1, members: members(['a', 'b', 'c']) });
    const t = tierBytes(
      [store('a', 0n, [], { 1: 800n }), store('b', 0n, [], { 1: 800n }), store('c', 0n, [], { 1: 200n })],
      [undefined, g],
      3,
      GROUPS,
    );
    expect(t.replicaLogicalBytes).toBe(800n);
    expect(t.replicaReplication).toBe(1800 / 800);
    expect(t.replicaExtraBytes).toBe(0n);
  });

  it('measured: cold stubs are stored on every member and logical once; their blobs are the shards’ logical bytes', () => {
    // A cold group 0: 150-byte stubs on a, b, c; RS(2,1) shards of 100 bytes on a, b, c.
    const g = rs21OnABC();
    const t = tierBytes(
      [
        store('a', 150n, [100n], { 0: 150n }),
        store('b', 150n, [0n, 100n], { 0: 150n }),
        store('c', 150n, [0n, 0n, 100n], { 0: 150n }),
      ],
      [g],
      3,
      GROUPS,
    );
    expect(t.replicaBytes).toBe(450n);
    expect(t.replicaLogicalBytes).toBe(150n);
    expect(t.replicaReplication).toBe(3);
    expect(t.effectiveReplication).toBe((450 + 300) / (150 + 200));
  });

  it('estimates while a store holding needles has not reported its groups (or reported another count)', () => {
    const g = create(PlacementGroupSchema, { group: 0, members: members(['a', 'b', 'c']) });
    const reported = [store('a', 300n, [], { 0: 300n }), store('b', 300n, [], { 0: 300n })];
    const t = tierBytes([...reported, store('c', 300n)], [g], 3, GROUPS);
    expect(t.replicaMeasured).toBe(false);
    expect(t.replicaLogicalBytes).toBe(300n);
    expect(tierBytes(reported, [g], 3, GROUPS + 1).replicaMeasured).toBe(false);
    // An empty store that has not reported does not hold the figure back.
    expect(tierBytes([...reported, store('e', 0n)], [g], 3, GROUPS).replicaMeasured).toBe(true);
  });
});
