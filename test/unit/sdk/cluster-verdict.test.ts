import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { GetClusterStatusResponseSchema } from '../../../gen/haystack/v1/directory_pb.js';
import {
  PlacementGroupSchema,
  PlacementMemberState,
  StoreRecordSchema,
} from '../../../gen/haystack/v1/metadata_pb.js';
import { ReplicationServiceGetStatsResponseSchema } from '../../../gen/haystack/v1/replication_pb.js';
import { clusterVerdict, verdictText } from '../../../internal/sdk/cluster-verdict.js';

const store = (storeId: string, health: StoreHealth) => create(StoreRecordSchema, { storeId, health });
const cluster = (stores: ReturnType<typeof store>[], leaderId = 'directory-1') =>
  create(GetClusterStatusResponseSchema, { leaderId, stores });
const replication = (blobsBelowTarget: bigint) =>
  create(ReplicationServiceGetStatsResponseSchema, { blobsBelowTarget });

describe('clusterVerdict (dashboard header and haystack health)', () => {
  it('is up when every store is up, nothing is below target and a leader exists', () => {
    const v = clusterVerdict(
      cluster([store('store-1', StoreHealth.HEALTHY), store('store-2', StoreHealth.DEGRADED)]),
      replication(0n),
    );
    expect(v).toEqual({ state: 'up', problems: [] });
    expect(verdictText(v)).toBe('cluster up');
  });

  it('is degraded with a store DOWN, naming it', () => {
    const v = clusterVerdict(
      cluster([store('store-1', StoreHealth.HEALTHY), store('store-2', StoreHealth.DOWN)]),
      replication(0n),
    );
    expect(v.state).toBe('degraded');
    expect(verdictText(v)).toBe('degraded: 1 store DOWN (store-2)');
  });

  it('is degraded with blobs below target, and says every problem', () => {
    const v = clusterVerdict(
      cluster(
        [store('a', StoreHealth.DOWN), store('b', StoreHealth.DOWN), store('c', StoreHealth.HEALTHY)],
        '',
      ),
      replication(3n),
    );
    expect(v.problems).toEqual(['2 stores DOWN (a, b)', '3 blobs below target', 'no directory leader']);
  });

  it('does not count below-target blobs when the replication manager did not answer', () => {
    expect(clusterVerdict(cluster([store('a', StoreHealth.HEALTHY)]), undefined).state).toBe('up');
  });

  it('is unreachable without a cluster status', () => {
    const v = clusterVerdict(undefined, replication(5n));
    expect(v.state).toBe('unreachable');
    expect(verdictText(v)).toBe('directory unreachable');
  });

  it('counts placement groups below size (a member JOINING after its store went DOWN), not balance moves', () => {
    const { ACTIVE, JOINING } = PlacementMemberState;
    const group = (members: [string, PlacementMemberState, boolean?][]) =>
      create(PlacementGroupSchema, {
        members: members.map(([storeId, state, leaving]) => ({ storeId, state, leaving: leaving ?? false })),
      });
    const c = cluster([store('a', StoreHealth.HEALTHY)]);
    c.placementGroups = [
      group([
        ['a', ACTIVE],
        ['b', ACTIVE],
        ['c', JOINING],
      ]), // c lost its copies: rebuilding
      group([
        ['a', ACTIVE],
        ['b', ACTIVE],
        ['c', ACTIVE, true],
        ['d', JOINING],
      ]), // a balance move
      group([
        ['a', ACTIVE],
        ['b', ACTIVE],
        ['c', ACTIVE],
      ]),
    ];
    expect(clusterVerdict(c, replication(0n)).problems).toEqual([
      '1 placement group below size (being rebuilt)',
    ]);
  });
});
