import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, createHandlerContext, type HandlerContext } from '@connectrpc/connect';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import {
  DirectoryService,
  DirectoryServiceListRequestSchema,
  type DirectoryServiceListResponse,
  LocateRequestSchema,
  type LocateResponse,
  VerifyBlobsRequestSchema,
} from '../../../gen/haystack/v1/directory_pb.js';
import { type LogEntry, LogEntrySchema } from '../../../gen/haystack/v1/metadata_pb.js';
import type { DirectoryConfig } from '../../../internal/directory/config.js';
import type { DirectoryNode } from '../../../internal/directory/node.js';
import { CLUSTER_MODE_HEADER } from '../../../internal/directory/peers.js';
import type { PlacementKeeper } from '../../../internal/directory/placement-keeper.js';
import { initialPlacement } from '../../../internal/directory/placement-plan.js';
import { DirectoryHandlers } from '../../../internal/directory/service.js';
import { MetadataState } from '../../../internal/directory/state-machine.js';
import type { StoreRegistry } from '../../../internal/directory/stores.js';
import { blobCommitted, leaderChanged, storeRegistered } from '../../helpers/directory-entries.js';

/**
 * A directory configured for placement groups that has not applied them (a follower
 * that lags at a cluster's birth, or the leader before it created them) holds a state
 * that looks like an empty cluster of per-blob records. It must not answer per-blob
 * reads from it (NOT_FOUND, an empty page) but UNAVAILABLE: retry, or ask the leader.
 * DirectoryHandlers over a stand-in DirectoryNode and a real MetadataState.
 */

const GROUPS = 8;
const LEADER = { id: 'directory-0', address: '127.0.0.1:7000', term: 1n };

interface Setup {
  role: 'leader' | 'follower';
  placementGroups: number;
  state: MetadataState;
  /** What waitApplied does (default: the index never arrives). */
  waitApplied?: (index: bigint) => Promise<boolean>;
}

function directory(s: Setup) {
  const self = s.role === 'leader' ? LEADER.id : 'directory-1';
  const node = {
    id: self,
    role: s.role,
    state: s.state,
    cfg: {
      placementGroups: s.placementGroups,
      readIndexWaitMs: 0,
      defaultReplicaCount: 3,
    } as DirectoryConfig,
    leader: () => LEADER,
    leadTerm: 1n,
    commitIndex: s.state.appliedIndex,
    isServingLeader: () => s.role === 'leader',
    requireLeader: () => {},
    waitApplied: s.waitApplied ?? (async () => false),
    // A forwarded call would leave here: none of these tests may reach it.
    client: () => {
      throw new Error('unexpected forward');
    },
  } as unknown as DirectoryNode;
  return new DirectoryHandlers(node, {} as StoreRegistry, {} as PlacementKeeper).impl();
}

function ctx(method: keyof typeof DirectoryService.method): HandlerContext {
  return createHandlerContext({
    service: DirectoryService,
    method: DirectoryService.method[method],
    protocolName: 'grpc',
    requestMethod: 'POST',
    url: `http://test/haystack.v1.DirectoryService/${method}`,
  });
}

async function locate(impl: ReturnType<typeof directory>, ids: string[], minIndex = 0n) {
  return (await impl.locate(
    create(LocateRequestSchema, { blobIds: ids, minIndex }),
    ctx('locate'),
  )) as LocateResponse;
}

async function list(impl: ReturnType<typeof directory>) {
  return (await impl.list(
    create(DirectoryServiceListRequestSchema, { pageSize: 10 }),
    ctx('list'),
  )) as DirectoryServiceListResponse;
}

/** The ConnectError a call ended with (fails the test when it succeeded). */
async function refusal(call: () => unknown): Promise<ConnectError> {
  try {
    await call();
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    return err as ConnectError;
  }
  throw new Error('the call was answered');
}

function placementChanged(index: bigint): LogEntry {
  const plan = initialPlacement(
    ['s0', 's1', 's2'].map((storeId) => ({ storeId, zone: '', health: StoreHealth.HEALTHY, writable: true })),
    GROUPS,
    3,
  );
  if (!plan.ok) throw new Error(plan.message);
  return create(LogEntrySchema, {
    index,
    term: 1n,
    change: { case: 'placementChanged', value: { groupCount: GROUPS, groups: plan.groups } },
  });
}

/** A new cluster's state before its placement groups: a leader and three stores (applied index 4). */
function birth(): MetadataState {
  const s = new MetadataState();
  s.apply(leaderChanged(1, 1, LEADER.id));
  for (const [i, id] of ['s0', 's1', 's2'].entries())
    s.apply(storeRegistered(i + 2, 1, id, StoreHealth.HEALTHY));
  return s;
}

describe('a directory configured for placement groups that has not applied them', () => {
  it('a follower answers Locate and List UNAVAILABLE, naming its applied index and the leader', async () => {
    const impl = directory({ role: 'follower', placementGroups: GROUPS, state: birth() });
    for (const call of [() => locate(impl, ['some-blob']), () => list(impl)]) {
      const ce = await refusal(call);
      expect(ce.code).toBe(Code.Unavailable);
      expect(ce.rawMessage).toContain('directory directory-1 has not yet applied the placement groups');
      expect(ce.rawMessage).toContain('(applied index 4)');
      expect(ce.rawMessage).toContain('ask the leader directory-0 at 127.0.0.1:7000');
      // Not a refusal of the mode: this directory does not know the mode yet.
      expect(ce.metadata.get(CLUSTER_MODE_HEADER)).toBeNull();
    }
  });

  it('the leader, before it created them, answers reads and VerifyBlobs UNAVAILABLE too', async () => {
    const impl = directory({ role: 'leader', placementGroups: GROUPS, state: birth() });
    const calls = [
      () => locate(impl, ['some-blob']),
      () => list(impl),
      // Answered from the empty state it would call every needle unreferenced (orphan GC).
      () =>
        impl.verifyBlobs(
          create(VerifyBlobsRequestSchema, { storeId: 's0', blobIds: ['x'] }),
          ctx('verifyBlobs'),
        ),
    ];
    for (const call of calls) {
      const ce = await refusal(call);
      expect(ce.code).toBe(Code.Unavailable);
      expect(ce.rawMessage).toContain('placement groups of this new cluster are not created yet');
    }
  });

  it('refuses by mode once the groups are applied, also when they arrive while Locate waits for min_index', async () => {
    const state = birth();
    const impl = directory({
      role: 'follower',
      placementGroups: GROUPS,
      state,
      waitApplied: async (index) => {
        state.apply(placementChanged(index));
        return true;
      },
    });
    const waited = await refusal(() => locate(impl, ['some-blob'], 5n));
    expect(waited.code).toBe(Code.FailedPrecondition);
    expect(waited.metadata.get(CLUSTER_MODE_HEADER)).toBe('placement');
    const listed = await refusal(() => list(impl));
    expect(listed.code).toBe(Code.FailedPrecondition);
    expect(listed.metadata.get(CLUSTER_MODE_HEADER)).toBe('placement');
  });

  it('a cluster of per-blob records still answers from its state (PLACEMENT_GROUPS=0, or set on a v1 cluster)', async () => {
    const empty = directory({ role: 'follower', placementGroups: 0, state: birth() });
    expect((await locate(empty, ['some-blob'])).locations[0]?.found).toBe(false);
    expect((await list(empty)).blobs).toEqual([]);

    const v1 = birth();
    v1.apply(blobCommitted(5, 1, 'old-blob', ['s0', 's1', 's2']));
    const impl = directory({ role: 'follower', placementGroups: GROUPS, state: v1 });
    const res = await locate(impl, ['old-blob', 'some-blob']);
    expect(res.locations.map((l) => l.found)).toEqual([true, false]);
    expect((await list(impl)).blobs.map((b) => b.blobId)).toEqual(['old-blob']);
  });
});
