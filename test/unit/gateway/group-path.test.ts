import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { WatchMetadataResponseSchema } from '../../../gen/haystack/v1/directory_pb.js';
import { LogEntrySchema, PlacementMemberState } from '../../../gen/haystack/v1/metadata_pb.js';
import { MemoryBlobCache } from '../../../internal/cache/memory-cache.js';
import { BlobGateway } from '../../../internal/gateway/blobs.js';
import { type AckRefusal, GroupPath, type PlacementStoreApi } from '../../../internal/gateway/group-path.js';
import { PlacementView } from '../../../internal/gateway/placement-view.js';
import { FakeDirectory, FakeStore, leaderEntry, queuedView } from './fakes.js';

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
      { mapStaleAfterMs: 1_000, leaderIndex: async () => view.state.appliedIndex },
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

/**
 * The ack-time re-check (docs/design/metadata-at-scale.md rule 1): a write or delete
 * planned while s4 was JOINING and DOWN reaches s1 and s2 only; if s4 is back by the
 * time they acknowledge, the manager may already have compared s4 without it, so the
 * answer is UNAVAILABLE and the retry reaches s4. The map must be confirmed current
 * (the leader's commit index applied) within MAP_STALE_AFTER.
 */
describe('GroupPath acknowledges a write or delete that skipped a member only while it is still JOINING and DOWN', () => {
  const upload = (gw: BlobGateway, blobId: string, data = Buffer.from(`content of ${blobId}`)) =>
    gw.write(
      { blobId, size: BigInt(data.length), contentType: '', sha256: '', replicaCount: 0 },
      (async function* () {
        yield data;
      })(),
    );
  /** How a write or delete ended: its code and message, or 'acknowledged' with its answer. */
  const settled = <T>(p: Promise<T>): Promise<{ code: string; message: string; answer?: T }> =>
    p.then(
      (answer) => ({ code: 'acknowledged', message: '', answer }),
      (e: unknown) => {
        const ce = ConnectError.from(e);
        return { code: Code[ce.code], message: ce.rawMessage };
      },
    );
  const until = async (cond: () => boolean, what: string) => {
    for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
    if (!cond()) throw new Error(`timed out waiting for ${what}`);
  };

  /** s1, s2 ACTIVE and s4 JOINING and DOWN in group 0 of 1; the view follows `push`ed entries. */
  async function cluster() {
    let index = 1n;
    const { view, deliver: deliverPush } = queuedView([leaderEntry(1n, 5n, 'directory-0')]);
    const entry = (change: MessageInitShape<typeof LogEntrySchema>['change']) =>
      create(LogEntrySchema, { index: ++index, term: 5n, change });
    /** Appends entries to the log; `deliver` false: the view's stream does not bring them (it lags). */
    const push = (changes: MessageInitShape<typeof LogEntrySchema>['change'][], deliver = true) => {
      const entries = changes.map(entry);
      directory.leaderCommit = index;
      if (!deliver) return;
      deliverPush(create(WatchMetadataResponseSchema, { msg: { case: 'entries', value: { entries } } }));
    };
    const peers = new Map<string, FakeStore>();
    const stores = ['s1', 's2', 's4'].map((id) => new FakeStore(id, peers));
    for (const s of stores) peers.set(s.storeId, s);
    const directory = new FakeDirectory(stores);
    const health = { s1: HEALTHY, s2: HEALTHY, s4: DOWN };
    push([
      ...Object.entries(health).map(([storeId, h], i) => ({
        case: 'storeRegistered' as const,
        value: { store: { storeId, address: `127.0.0.1:${i + 1}`, health: h } },
      })),
      {
        case: 'placementChanged',
        value: {
          groupCount: 1,
          groups: [
            {
              group: 0,
              members: [
                { storeId: 's1', state: ACTIVE },
                { storeId: 's2', state: ACTIVE },
                { storeId: 's4', state: JOINING },
              ],
            },
          ],
        },
      },
    ]);
    view.start();
    await view.whenReady(5_000);
    for (let i = 0; i < 500 && view.state.placement.groupFor('a')?.members.length !== 3; i++)
      await new Promise((r) => setTimeout(r, 10));
    /** Store deletes wait for this while set (the deletes' acks held). */
    let holdDeletes: Promise<void> | undefined;
    let deletesReceived = 0;
    const refused: AckRefusal[] = [];
    const gw = new BlobGateway({
      directory,
      store: (s) => peers.get(s.storeId)!.api(),
      cache: new MemoryBlobCache({ ttlMs: 60_000, maxBlobSize: 0, maxBytes: 1e8 }),
      log,
      maxUploadSize: 1e7,
      storeTimeoutMs: 2_000,
      placement: {
        view,
        stores: (s) =>
          ({
            delete: async (req: { blobId: string }) => {
              deletesReceived++;
              await holdDeletes;
              const found = peers.get(s.storeId)!.blobs.delete(req.blobId);
              return { found };
            },
          }) as unknown as PlacementStoreApi,
        readyTimeoutMs: 5_000,
        minReplicas: 2,
        mapStaleAfterMs: 300,
        onAckRefused: (r) => refused.push(r),
      },
    });
    const s4Back = () => push([{ case: 'storeHealthChanged', value: { storeId: 's4', health: HEALTHY } }]);
    /** An upload of `blobId` received by s1 (which forwards to the rest), its ack held until `release`. */
    const writeInFlight = async (blobId: string) => {
      let release = () => {};
      stores[0]!.hold = new Promise<void>((r) => {
        release = r;
      });
      const outcome = settled(upload(gw, blobId));
      await until(() => stores[0]!.writesReceived > 0, 'the write at s1');
      return {
        outcome,
        release: () => {
          stores[0]!.hold = undefined;
          release();
        },
      };
    };
    const held = () => {
      let release = () => {};
      holdDeletes = new Promise<void>((r) => {
        release = r;
      });
      return () => {
        holdDeletes = undefined;
        release();
      };
    };
    return {
      view,
      stores,
      s4Back,
      push,
      writeInFlight,
      holdDeletes: held,
      deletes: () => deletesReceived,
      refused,
      gw,
    };
  }

  it('s4 is back while the write is in flight: UNAVAILABLE naming the group and s4; the retry reaches s4', async () => {
    const c = await cluster();
    try {
      const w = await c.writeInFlight('a');
      c.s4Back();
      await until(() => c.view.state.stores.get('s4')?.health === HEALTHY, 'the view to apply it');
      w.release();
      const r = await w.outcome;
      expect(r.code).toBe('Unavailable');
      expect(r.message).toContain(
        'placement group 0 changed while the write was in flight: s4 is back; retry',
      );
      expect(c.refused).toEqual(['group_changed']);
      // Durable on s1 and s2 but not acknowledged; the retry includes s4.
      expect(c.stores[2]!.blobs.has('a')).toBe(false);
      const info = await upload(c.gw, 'a');
      expect(info.replicaCount).toBe(3);
      expect(c.stores.map((s) => s.blobs.get('a')?.cookie)).toEqual(Array(3).fill(info.cookie));
    } finally {
      c.view.stop();
    }
  });

  it('control: s4 still JOINING and DOWN at ack time, on a map confirmed current: acknowledged on s1 and s2', async () => {
    const c = await cluster();
    try {
      const w = await c.writeInFlight('a');
      // Another change of the map meanwhile (s2 reported HEALTHY again), not s4's.
      c.push([
        {
          case: 'storeHealthChanged',
          value: { storeId: 's2', health: HEALTHY },
        },
      ]);
      w.release();
      const r = await w.outcome;
      expect(r.code).toBe('acknowledged');
      expect(r.answer?.replicaCount).toBe(2);
      expect(c.refused).toEqual([]);
      expect(c.stores[2]!.blobs.has('a')).toBe(false);
    } finally {
      c.view.stop();
    }
  });

  it('a map that lags the leader (not confirmed within MAP_STALE_AFTER): UNAVAILABLE, not acknowledged on it', async () => {
    const c = await cluster();
    try {
      const w = await c.writeInFlight('a');
      // The leader committed s4's return; this gateway's stream does not bring it.
      c.push([{ case: 'storeHealthChanged', value: { storeId: 's4', health: HEALTHY } }], false);
      w.release();
      const r = await w.outcome;
      expect(r.code).toBe('Unavailable');
      expect(r.message).toContain('placement group 0: the write of a did not reach s4');
      expect(r.message).toContain(
        'could not confirm its placement map current within MAP_STALE_AFTER (300 ms',
      );
      expect(c.refused).toEqual(['map_stale']);
    } finally {
      c.view.stop();
    }
  });

  it('a delete in flight when s4 is back: UNAVAILABLE naming s4 (s4 could keep the blob live)', async () => {
    const c = await cluster();
    try {
      const release = c.holdDeletes();
      const deleting = settled(c.gw.delete('a'));
      await until(() => c.deletes() === 2, 'the deletes at s1 and s2');
      c.s4Back();
      await until(() => c.view.state.stores.get('s4')?.health === HEALTHY, 'the view to apply it');
      release();
      const r = await deleting;
      expect(r.code).toBe('Unavailable');
      expect(r.message).toContain(
        'placement group 0 changed while the delete was in flight: s4 is back; retry',
      );
      // Control: with s4 still DOWN a delete is acknowledged.
      const d = await cluster();
      try {
        expect(await d.gw.delete('a')).toBe(false);
        expect(d.refused).toEqual([]);
      } finally {
        d.view.stop();
      }
    } finally {
      c.view.stop();
    }
  });
});
