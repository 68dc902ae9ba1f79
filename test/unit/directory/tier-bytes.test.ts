import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import {
  PlacementGroupSchema,
  PlacementMemberSchema,
  PlacementMemberState,
  StoreRecordSchema,
} from '../../../gen/haystack/v1/metadata_pb.js';
import { tierBytes } from '../../../internal/directory/tier-bytes.js';

const members = (ids: string[]) =>
  ids.map((storeId) => create(PlacementMemberSchema, { storeId, state: PlacementMemberState.ACTIVE }));
const store = (storeId: string, live: bigint, byIndex: bigint[] = []) =>
  create(StoreRecordSchema, {
    storeId,
    volumes: [{ volumeId: 1, liveBytes: live }],
    shards: {
      count: BigInt(byIndex.length),
      bytes: byIndex.reduce((a, b) => a + b, 0n),
      bytesByIndex: byIndex,
    },
  });

describe('bytes per tier', () => {
  it('replicas count over the replicas per group; shards count their data shards as logical bytes', () => {
    // RS(2,1) on a, b, c: 100 bytes of shard per index; 3 replicas of 300 logical bytes.
    const g = create(PlacementGroupSchema, {
      group: 0,
      members: members(['a', 'b', 'c']),
      ecMembers: members(['a', 'b', 'c']),
      ecDataShards: 2,
    });
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
});
