import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { WatchMetadataResponseSchema } from '../../../gen/haystack/v1/directory_pb.js';
import { LogEntrySchema, PlacementMemberState } from '../../../gen/haystack/v1/metadata_pb.js';
import { GroupPath, type PlacementStoreApi } from '../../../internal/gateway/group-path.js';
import { PlacementView } from '../../../internal/gateway/placement-view.js';
import { leaderEntry } from './fakes.js';

/**
 * The answer to a write whose placement group has too few members up (issue 14,
 * docs/faults.md "Availability when a store fails"): UNAVAILABLE at once, naming the
 * DOWN stores and saying what brings writes back — only the demotion when that is all
 * that is missing, else a store's return or replacement (and whether any store could
 * replace it).
 */

const log = pino({ level: 'silent' });
const { ACTIVE, JOINING } = PlacementMemberState;
const { HEALTHY, DOWN } = StoreHealth;

/** Store id → health; member id → state. */
type Stores = Record<string, StoreHealth>;
type Members = Record<string, PlacementMemberState>;

/** A view holding `stores` and one placement group of `members`, loaded. */
async function viewOf(stores: Stores, members: Members): Promise<PlacementView> {
  let index = 1n;
  const entry = (change: MessageInitShape<typeof LogEntrySchema>['change']) =>
    create(LogEntrySchema, { index: ++index, term: 5n, change });
  const entries = [
    ...Object.entries(stores).map(([storeId, health], i) =>
      entry({
        case: 'storeRegistered',
        value: { store: { storeId, address: `127.0.0.1:${i + 1}`, health } },
      }),
    ),
    entry({
      case: 'placementChanged',
      value: {
        groupCount: 1,
        groups: [
          { group: 0, members: Object.entries(members).map(([storeId, state]) => ({ storeId, state })) },
        ],
      },
    }),
  ];
  const view = new PlacementView(
    async function* (_req, signal) {
      yield create(WatchMetadataResponseSchema, { msg: leaderEntry(1n, 5n, 'directory-0').msg });
      yield create(WatchMetadataResponseSchema, { msg: { case: 'entries', value: { entries } } });
      await new Promise<void>((r) => signal?.addEventListener('abort', () => r(), { once: true }));
    },
    'gw-test',
    log,
    10,
  );
  view.start();
  for (
    let i = 0;
    i < 500 && view.state.placement.groupFor('a')?.members.length !== Object.keys(members).length;
    i++
  ) {
    await new Promise((r) => setTimeout(r, 10));
  }
  return view;
}

/** planWrite's refusal for blob 'a' (min replicas 2), or 'planned'. */
async function refusal(stores: Stores, members: Members): Promise<{ code: string; message: string }> {
  const view = await viewOf(stores, members);
  try {
    const path = new GroupPath(
      view,
      () => ({}) as PlacementStoreApi,
      { delete: async () => ({}) as never, updateReplicas: async () => ({}) as never },
      log,
      200,
      2,
    );
    return await path.planWrite('a', 10n, 0).then(
      () => ({ code: 'planned', message: '' }),
      (e: unknown) => {
        const ce = ConnectError.from(e);
        return { code: Code[ce.code], message: ce.rawMessage };
      },
    );
  } finally {
    view.stop();
  }
}

const TWO_DOWN: Stores = { s0: HEALTHY, s1: DOWN, s2: DOWN };
const ONE_DOWN: Stores = { s0: HEALTHY, s1: HEALTHY, s2: DOWN };
/** The group after the directory demoted s1 and s2. */
const DEMOTED: Members = { s0: ACTIVE, s1: JOINING, s2: JOINING };

describe('GroupPath.planWrite with stores DOWN (min replicas 2)', () => {
  it('two of three members DOWN and no other store: UNAVAILABLE naming both, restart them or add a store', async () => {
    const r = await refusal(TWO_DOWN, DEMOTED);
    expect(r.code).toBe('Unavailable');
    expect(r.message).toContain('s1, s2 DOWN, 1 member(s) up (1 ACTIVE), MIN_REPLICA_COUNT 2');
    expect(r.message).toContain('resume when s1 or s2 is back');
    expect(r.message).toContain('there is none: restart s1 / s2 or add a store');
    expect(r.message).not.toContain('demotes');
  });

  it('the same with a HEALTHY store outside the group: says one could replace a DOWN member', async () => {
    const r = await refusal({ ...TWO_DOWN, s3: HEALTHY }, DEMOTED);
    expect(r.code).toBe('Unavailable');
    expect(r.message).toContain('PLACEMENT_REPLACE_AFTER');
    expect(r.message).toContain('(1 such store(s) now); retry later');
  });

  it('one ACTIVE member DOWN, enough up: only the demotion is missing, retry', async () => {
    const r = await refusal(ONE_DOWN, { s0: ACTIVE, s1: ACTIVE, s2: ACTIVE });
    expect(r.code).toBe('Unavailable');
    expect(r.message).toContain('s2 DOWN');
    expect(r.message).toContain('retry: the directory demotes a DOWN member to JOINING within a second');
  });

  it('after the demotion the write is planned on the two members up', async () => {
    const r = await refusal(ONE_DOWN, { s0: ACTIVE, s1: ACTIVE, s2: JOINING });
    expect(r.code).toBe('planned');
  });
});
