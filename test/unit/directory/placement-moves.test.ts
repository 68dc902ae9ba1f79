import { clone, create, type MessageInitShape } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import {
  LogEntrySchema,
  type PlacementGroup,
  PlacementGroupSchema,
  PlacementMemberSchema,
  PlacementMemberState,
} from '../../../gen/haystack/v1/metadata_pb.js';
import {
  finishMoves,
  movesInProgress,
  planBalance,
  startDrains,
  storeLoads,
  underfullStores,
} from '../../../internal/directory/placement-moves.js';
import {
  demoteDownMembers,
  initialPlacement,
  type PlacementCandidate,
  replaceLostMembers,
} from '../../../internal/directory/placement-plan.js';
import { MetadataState } from '../../../internal/directory/state-machine.js';
import { promoted } from '../../../internal/replication/placement-planner.js';

const store = (id: string, o: Partial<PlacementCandidate> = {}): PlacementCandidate => ({
  storeId: id,
  zone: '',
  health: StoreHealth.HEALTHY,
  writable: true,
  ...o,
});

const ids = (g: PlacementGroup) => g.members.map((m) => m.storeId);
const staying = (g: PlacementGroup) => g.members.filter((m) => !m.leaving).map((m) => m.storeId);

function place(stores: PlacementCandidate[], groups: number): PlacementGroup[] {
  const plan = initialPlacement(stores, groups, 3);
  if (!plan.ok) throw new Error(plan.message);
  return plan.groups;
}

/** Applies changed groups over the current ones (as PlacementChanged does). */
function apply(groups: PlacementGroup[], changed: PlacementGroup[]): PlacementGroup[] {
  const out = groups.map((g) => clone(PlacementGroupSchema, g));
  for (const c of changed) out[c.group] = clone(PlacementGroupSchema, c);
  return out;
}

/** The replication manager's part: every JOINING member backfilled and promoted. */
function backfillAll(groups: PlacementGroup[]): PlacementGroup[] {
  return groups.map((g) => {
    let cur = g;
    for (const m of g.members) {
      if (m.state !== PlacementMemberState.JOINING) continue;
      cur = create(PlacementGroupSchema, { ...cur, members: promoted(cur, m.storeId)! });
    }
    return cur;
  });
}

describe('placement moves: drain', () => {
  it('marks the draining member leaving and adds a JOINING replacement; the leaving member goes only once it is ACTIVE', () => {
    const stores = ['a', 'b', 'c', 'd'].map((s) => store(s));
    let groups = place(stores, 8);
    const draining = stores.map((s) => (s.storeId === 'a' ? { ...s, draining: true } : s));
    const started = startDrains(groups, draining, 100);
    const holding = groups.filter((g) => ids(g).includes('a')).length;
    expect(started.length).toBe(holding);
    for (const g of started) {
      const a = g.members.find((m) => m.storeId === 'a')!;
      expect(a.leaving).toBe(true);
      expect(a.state).toBe(PlacementMemberState.ACTIVE); // still serves reads
      expect(g.members.length).toBe(4);
      expect(g.members.at(-1)?.state).toBe(PlacementMemberState.JOINING);
      expect(g.members.at(-1)?.storeId).not.toBe('a');
    }
    groups = apply(groups, started);
    // Nothing finishes before the replacements are ACTIVE.
    expect(finishMoves(groups, new Set())).toEqual([]);
    // Not again: a started drain is not started twice.
    expect(startDrains(groups, draining, 100)).toEqual([]);
    groups = backfillAll(groups);
    // A staying member DOWN holds the finish back.
    const downOne = staying(groups.find((g) => g.members.some((m) => m.leaving))!)[0]!;
    expect(finishMoves(groups, new Set([downOne])).length).toBeLessThan(holding);
    const finished = finishMoves(groups, new Set());
    expect(finished.length).toBe(holding);
    groups = apply(groups, finished);
    for (const g of groups) {
      expect(ids(g)).not.toContain('a');
      expect(g.members.length).toBe(3);
      expect(g.members.every((m) => m.state === PlacementMemberState.ACTIVE && !m.leaving)).toBe(true);
    }
    const loads = storeLoads(
      groups,
      [],
      [
        { storeId: 'a', draining: true },
        { storeId: 'b', draining: false },
      ],
    );
    expect(loads[0]).toMatchObject({ storeId: 'a', memberships: 0, draining: true, drained: true });
    expect(loads[1]?.drained).toBe(false);
  });

  it('a draining store holding EC memberships is not drained until the manager moved its shards', () => {
    const ec = (ids: string[]) =>
      ids.map((storeId) => create(PlacementMemberSchema, { storeId, state: PlacementMemberState.ACTIVE }));
    const g = create(PlacementGroupSchema, {
      group: 0,
      members: ec(['b', 'c', 'd']),
      ecMembers: ec(['a', 'b', 'c']),
      ecDataShards: 2,
    });
    const stores = [
      { storeId: 'a', draining: true, shards: 7n },
      { storeId: 'b', draining: false },
    ];
    const [a, b] = storeLoads([g], [], stores);
    expect(a).toMatchObject({ storeId: 'a', memberships: 0, ecMemberships: 1, shards: 7n, drained: false });
    expect(b).toMatchObject({ memberships: 1, ecMemberships: 1, shards: 0n });
    const moved = clone(PlacementGroupSchema, g);
    moved.ecMembers = ec(['e', 'b', 'c']);
    expect(storeLoads([moved], [], stores)[0]).toMatchObject({ ecMemberships: 0, drained: true });
  });

  it('starts at most `limit` groups at once and waits when no store can take a group', () => {
    const stores = ['a', 'b', 'c', 'd'].map((s) => store(s));
    const groups = place(stores, 16);
    const draining = stores.map((s) => (s.storeId === 'a' ? { ...s, draining: true } : s));
    expect(startDrains(groups, draining, 2).length).toBe(2);
    // Three stores, all members of every group: nowhere to go.
    const three = place(stores.slice(0, 3), 4);
    const d3 = stores.slice(0, 3).map((s) => (s.storeId === 'a' ? { ...s, draining: true } : s));
    expect(startDrains(three, d3, 100)).toEqual([]);
  });

  it('a draining store gets no new membership (initial placement, lost-store replacement)', () => {
    const stores = ['a', 'b', 'c', 'd', 'e'].map((s) => store(s, { draining: s === 'e' }));
    for (const g of place(stores, 32)) expect(ids(g)).not.toContain('e');
    const groups = place(stores.slice(0, 4), 8);
    const lost = new Set(['a']);
    for (const g of replaceLostMembers(groups, stores, lost)) expect(ids(g)).not.toContain('e');
  });

  it('keeps the leaving flag and ec_members through demotion, promotion and lost-store replacement', () => {
    const stores = ['a', 'b', 'c', 'd', 'e'].map((s) => store(s));
    const base = place(stores.slice(0, 3), 1)[0]!;
    base.ecMembers = [create(PlacementMemberSchema, { storeId: 'e', state: PlacementMemberState.ACTIVE })];
    const [moving] = startDrains(
      [base],
      stores.map((s) => (s.storeId === 'a' ? { ...s, draining: true } : s)),
      1,
    );
    expect(moving?.ecMembers.length).toBe(1);
    const demoted = demoteDownMembers([moving!], new Set(['a']))[0]!;
    expect(demoted.members.find((m) => m.storeId === 'a')).toMatchObject({ leaving: true, state: 2 });
    expect(demoted.ecMembers.length).toBe(1);
    const joining = moving!.members.find((m) => m.state === PlacementMemberState.JOINING)!.storeId;
    const after = promoted(demoted, joining)!;
    expect(after.find((m) => m.storeId === 'a')?.leaving).toBe(true);
    // A lost leaving member is not replaced: its replacement exists already.
    expect(replaceLostMembers([demoted], stores, new Set(['a']))).toEqual([]);
  });
});

describe('placement moves: balance', () => {
  it('moves memberships from the fullest stores to a new empty one until they differ by at most one', () => {
    fc.assert(
      fc.property(fc.integer({ min: 3, max: 8 }), fc.integer({ min: 4, max: 96 }), (n, count) => {
        const old = Array.from({ length: n }, (_, i) => store(`s${i}`));
        let groups = place(old, count);
        const all = [...old, store('new')];
        for (let round = 0; round < 50; round++) {
          const plan = planBalance(groups, all, 16);
          if (plan.moves.length === 0) break;
          for (const m of plan.moves) {
            expect(m.to).not.toBe(m.from);
            const g = plan.changed.find((x) => x.group === m.group)!;
            expect(g.members.find((x) => x.storeId === m.from)?.leaving).toBe(true);
            expect(g.members.find((x) => x.storeId === m.to)?.state).toBe(PlacementMemberState.JOINING);
          }
          groups = apply(groups, plan.changed);
          groups = apply(groups, finishMoves(backfillAll(groups), new Set()));
        }
        expect(movesInProgress(groups)).toBe(0);
        const counts = storeLoads(
          groups,
          [],
          all.map((s) => ({ storeId: s.storeId, draining: false })),
        ).map((l) => l.memberships);
        expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
        for (const g of groups) {
          expect(g.members.length).toBe(3);
          expect(new Set(ids(g)).size).toBe(3);
        }
      }),
      { numRuns: 40 },
    );
  });

  it('plans nothing on a balanced cluster, skips groups with a move under way, honours max_moves', () => {
    const stores = ['a', 'b', 'c'].map((s) => store(s));
    expect(planBalance(place(stores, 8), stores, 16).moves).toEqual([]);
    const four = [...stores, store('d')];
    const groups = place(stores, 12);
    const plan = planBalance(groups, four, 2);
    expect(plan.moves.length).toBe(2);
    const again = planBalance(apply(groups, plan.changed), four, 100);
    for (const m of again.moves) expect(plan.moves.map((x) => x.group)).not.toContain(m.group);
    expect(again.after.get('d')).toBe(9);
  });

  it('finds a store clearly below its share (automatic balance), and none once balance is done', () => {
    fc.assert(
      fc.property(fc.integer({ min: 3, max: 8 }), fc.integer({ min: 4, max: 96 }), (n, count) => {
        const old = Array.from({ length: n }, (_, i) => store(`s${i}`));
        let groups = place(old, count);
        expect(underfullStores(groups, old)).toEqual([]);
        const all = [...old, store('new')];
        // The mean is 3·count/(n+1); the new store holds none.
        expect(underfullStores(groups, all)).toEqual((3 * count) / (n + 1) >= 2 ? ['new'] : []);
        for (let round = 0; round < 50; round++) {
          const plan = planBalance(groups, all, 8);
          if (plan.moves.length === 0) break;
          groups = apply(groups, plan.changed);
          groups = apply(groups, finishMoves(backfillAll(groups), new Set()));
        }
        expect(underfullStores(groups, all)).toEqual([]);
      }),
      { numRuns: 40 },
    );
  });

  it('counts only eligible stores as below their share', () => {
    const stores = ['a', 'b', 'c'].map((s) => store(s));
    const groups = place(stores, 12);
    const empty = [
      store('d', { draining: true }),
      store('e', { health: StoreHealth.DOWN }),
      store('f', { writable: false }),
      store('g', { health: StoreHealth.DEGRADED }),
    ];
    expect(underfullStores(groups, [...stores, ...empty])).toEqual([]);
    expect(underfullStores(groups, [...stores, ...empty, store('h')])).toEqual(['h']);
  });

  it('never moves onto a draining, DOWN or unwritable store, nor reduces a group’s zones', () => {
    const stores = [store('a', { zone: 'z1' }), store('b', { zone: 'z2' }), store('c', { zone: 'z3' })];
    const groups = place(stores, 12);
    const extra = [
      store('d', { zone: 'z1', draining: true }),
      store('e', { zone: 'z2', health: StoreHealth.DOWN }),
      store('f', { zone: 'z3', writable: false }),
    ];
    expect(planBalance(groups, [...stores, ...extra], 16).moves).toEqual([]);
    // Same zone as the member it replaces: allowed (zones kept).
    const plan = planBalance(groups, [...stores, store('g', { zone: 'z1' })], 16);
    expect(plan.moves.length).toBeGreaterThan(0);
    for (const m of plan.moves) expect(m.from).toBe('a');
  });
});

describe('placement moves: the replicated state', () => {
  it('StoreDrainChanged sets the drain; a heartbeat re-registration keeps it', () => {
    const s = new MetadataState();
    const e = (index: bigint, change: MessageInitShape<typeof LogEntrySchema>['change']) =>
      create(LogEntrySchema, { index, term: 1n, change });
    s.apply(
      e(1n, {
        case: 'storeRegistered',
        value: { store: { storeId: 'a', address: 'x:1' } },
      }),
    );
    s.apply(e(2n, { case: 'storeDrainChanged', value: { storeId: 'a', draining: true } }));
    expect(s.stores.get('a')?.draining).toBe(true);
    s.apply(
      e(3n, {
        case: 'storeRegistered',
        value: { store: { storeId: 'a', address: 'x:1' } },
      }),
    );
    expect(s.stores.get('a')?.draining).toBe(true);
    s.apply(e(4n, { case: 'storeDrainChanged', value: { storeId: 'a', draining: false } }));
    expect(s.stores.get('a')?.draining).toBe(false);
  });
});
