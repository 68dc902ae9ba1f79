import { create } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import {
  type LogEntry,
  LogEntrySchema,
  PlacementMemberSchema,
  PlacementMemberState,
} from '../../../gen/haystack/v1/metadata_pb.js';
import { placementGroupOf } from '../../../internal/common/placement.js';
import {
  checkEcMembers,
  checkMembers,
  demoteDownMembers,
  initialPlacement,
  type PlacementCandidate,
  replaceLostMembers,
} from '../../../internal/directory/placement-plan.js';
import { MetadataState } from '../../../internal/directory/state-machine.js';

const store = (id: string, zone = '', health = StoreHealth.HEALTHY, writable = true): PlacementCandidate => ({
  storeId: id,
  zone,
  health,
  writable,
});

function entry(index: bigint, change: LogEntry['change']): LogEntry {
  return create(LogEntrySchema, { index, term: 1n, change });
}

describe('placement groups: the plan', () => {
  it('spreads groups evenly over the stores, never a store twice in a group', () => {
    fc.assert(
      fc.property(fc.integer({ min: 3, max: 12 }), fc.integer({ min: 1, max: 128 }), (n, groups) => {
        const stores = Array.from({ length: n }, (_, i) => store(`s${i}`));
        const plan = initialPlacement(stores, groups, 3);
        if (!plan.ok) throw new Error(plan.message);
        const load = new Map<string, number>();
        for (const g of plan.groups) {
          expect(new Set(g.members.map((m) => m.storeId)).size).toBe(3);
          for (const m of g.members) {
            expect(m.state).toBe(PlacementMemberState.ACTIVE);
            load.set(m.storeId, (load.get(m.storeId) ?? 0) + 1);
          }
        }
        const counts = [...load.values()];
        // Greedy least-loaded picks keep every store within one membership of the others.
        expect(Math.max(...counts) - Math.min(...counts, Number.POSITIVE_INFINITY)).toBeLessThanOrEqual(1);
      }),
    );
  });

  it('puts a group in as many zones as it can', () => {
    const stores = ['a', 'b', 'c'].flatMap((z) => [store(`${z}1`, z), store(`${z}2`, z)]);
    const plan = initialPlacement(stores, 32, 3);
    if (!plan.ok) throw new Error(plan.message);
    for (const g of plan.groups) {
      expect(new Set(g.members.map((m) => m.storeId[0])).size).toBe(3);
    }
  });

  it('waits for enough healthy writable stores', () => {
    const plan = initialPlacement([store('a'), store('b'), store('c', '', StoreHealth.DOWN)], 8, 3);
    expect(plan.ok).toBe(false);
    if (!plan.ok) expect(plan.message).toMatch(/needs 3 healthy writable stores, 2/);
    expect(
      initialPlacement([store('a'), store('b'), store('c', '', StoreHealth.HEALTHY, false)], 8, 3).ok,
    ).toBe(false);
  });

  it('replaces a lost member with a JOINING one on another store, keeping the rest in place', () => {
    const stores = ['s0', 's1', 's2', 's3', 's4'].map((id) => store(id));
    const plan = initialPlacement(stores, 16, 3);
    if (!plan.ok) throw new Error(plan.message);
    const lost = new Set(['s1']);
    const live = stores.map((s) => (s.storeId === 's1' ? { ...s, health: StoreHealth.DOWN } : s));
    const changed = replaceLostMembers(plan.groups, live, lost);
    const affected = plan.groups.filter((g) => g.members.some((m) => m.storeId === 's1'));
    expect(changed.map((g) => g.group)).toEqual(affected.map((g) => g.group));
    for (const g of changed) {
      const before = plan.groups[g.group]!;
      expect(g.members).toHaveLength(3);
      g.members.forEach((m, i) => {
        const old = before.members[i]!;
        if (old.storeId === 's1') {
          expect(m.storeId).not.toBe('s1');
          expect(before.members.some((x) => x.storeId === m.storeId)).toBe(false);
          expect(m.state).toBe(PlacementMemberState.JOINING);
        } else {
          expect(m).toEqual(old);
        }
      });
    }
  });

  it('leaves a group alone when no store can take the lost member', () => {
    const stores = ['s0', 's1', 's2'].map((id) => store(id));
    const plan = initialPlacement(stores, 4, 3);
    if (!plan.ok) throw new Error(plan.message);
    const live = stores.map((s) => (s.storeId === 's0' ? { ...s, health: StoreHealth.DOWN } : s));
    expect(replaceLostMembers(plan.groups, live, new Set(['s0']))).toEqual([]);
  });

  it("demotes the ACTIVE members of a DOWN store to JOINING, unless it is a group's last ACTIVE one", () => {
    const stores = ['s0', 's1', 's2', 's3'].map((id) => store(id));
    const plan = initialPlacement(stores, 12, 3);
    if (!plan.ok) throw new Error(plan.message);
    const changed = demoteDownMembers(plan.groups, new Set(['s2']));
    expect(changed.map((g) => g.group)).toEqual(
      plan.groups.filter((g) => g.members.some((m) => m.storeId === 's2')).map((g) => g.group),
    );
    for (const g of changed) {
      for (const m of g.members) {
        expect(m.state).toBe(m.storeId === 's2' ? PlacementMemberState.JOINING : PlacementMemberState.ACTIVE);
      }
    }
    // Every member down: nobody left to catch the store up, so nothing changes.
    expect(demoteDownMembers(plan.groups, new Set(['s0', 's1', 's2', 's3']))).toEqual([]);
  });

  it('checks member lists of UpdatePlacement', () => {
    const reg = new Set(['a', 'b']);
    const A = PlacementMemberState.ACTIVE;
    const J = PlacementMemberState.JOINING;
    expect(
      checkMembers(
        [
          { storeId: 'a', state: A },
          { storeId: 'b', state: J },
        ],
        reg,
      ),
    ).toBeUndefined();
    expect(checkMembers([], reg)).toMatch(/at least one member/);
    expect(checkMembers([{ storeId: 'x', state: A }], reg)).toMatch(/not registered/);
    expect(
      checkMembers(
        [
          { storeId: 'a', state: A },
          { storeId: 'a', state: J },
        ],
        reg,
      ),
    ).toMatch(/twice/);
    expect(checkMembers([{ storeId: 'a', state: J }], reg)).toMatch(/ACTIVE/);
  });
});

describe('placement groups: EC members (the cold tier)', () => {
  const A = PlacementMemberState.ACTIVE;
  const withEc = () => {
    const stores = ['s0', 's1', 's2', 's3', 's4'].map((id) => store(id));
    const plan = initialPlacement(stores, 8, 3);
    if (!plan.ok) throw new Error(plan.message);
    for (const g of plan.groups) {
      g.ecMembers = ['s4', 's3', 's2', 's1', 's0'].map((storeId) =>
        create(PlacementMemberSchema, { storeId, state: A }),
      );
      g.ecDataShards = 3;
    }
    return { stores, groups: plan.groups };
  };

  it('a demotion or a replacement of members keeps every shard store in place', () => {
    const { stores, groups } = withEc();
    for (const g of demoteDownMembers(groups, new Set(['s1']))) {
      expect(g.ecMembers).toEqual(groups[g.group]!.ecMembers);
    }
    const live = stores.map((s) => (s.storeId === 's1' ? { ...s, health: StoreHealth.DOWN } : s));
    const changed = replaceLostMembers(groups, live, new Set(['s1']));
    expect(changed.length).toBeGreaterThan(0);
    for (const g of changed) expect(g.ecMembers).toEqual(groups[g.group]!.ecMembers);
  });

  it('a lost EC member is swapped in place for a JOINING store holding no shard of the group', () => {
    const { stores, groups } = withEc();
    const extra = [...stores, store('s5')];
    const live = extra.map((s) => (s.storeId === 's3' ? { ...s, health: StoreHealth.DOWN } : s));
    const changed = replaceLostMembers(groups, live, new Set(['s3']));
    expect(changed.map((g) => g.group)).toEqual(groups.map((g) => g.group));
    for (const g of changed) {
      const before = groups[g.group]!;
      expect(g.ecDataShards).toBe(3); // the group's code is kept
      g.ecMembers.forEach((m, i) => {
        const old = before.ecMembers[i]!;
        if (old.storeId === 's3') {
          expect(m.storeId).toBe('s5');
          expect(m.state).toBe(PlacementMemberState.JOINING);
        } else expect(m).toEqual(old);
      });
    }
  });

  it('checks EC member lists of UpdatePlacement', () => {
    const reg = new Set(['a', 'b', 'c']);
    expect(
      checkEcMembers(
        [
          { storeId: 'a', state: A },
          { storeId: 'b', state: PlacementMemberState.JOINING },
        ],
        reg,
      ),
    ).toBeUndefined();
    expect(
      checkEcMembers(
        [
          { storeId: 'a', state: A },
          { storeId: 'a', state: A },
        ],
        reg,
      ),
    ).toMatch(/twice/);
    expect(checkEcMembers([{ storeId: 'x', state: A }], reg)).toMatch(/not registered/);
    expect(checkEcMembers([{ storeId: 'a', state: PlacementMemberState.UNSPECIFIED }], reg)).toMatch(
      /ACTIVE or JOINING/,
    );
    const many = Array.from({ length: 31 }, (_, i) => ({ storeId: `s${i}`, state: A }));
    expect(checkEcMembers(many, new Set(many.map((m) => m.storeId)))).toMatch(/at most 30/);
  });
});

describe('placement groups: the replicated state', () => {
  function placed(): MetadataState {
    const s = new MetadataState();
    const plan = initialPlacement(
      ['s0', 's1', 's2', 's3'].map((id) => store(id)),
      8,
      3,
    );
    if (!plan.ok) throw new Error(plan.message);
    s.apply(entry(1n, { case: 'placementChanged', value: { groupCount: 8, groups: plan.groups } as never }));
    return s;
  }

  it('maps every id to its group, and a group change bumps only that group', () => {
    const s = placed();
    expect(s.placement.groupCount).toBe(8);
    const g = s.placement.groupFor('cat.jpg')!;
    expect(g.group).toBe(placementGroupOf('cat.jpg', 8));
    expect(g.epoch).toBe(1n);
    s.apply(
      entry(2n, {
        case: 'placementChanged',
        value: {
          groupCount: 0,
          groups: [{ group: 3, members: [{ storeId: 's0', state: PlacementMemberState.ACTIVE }] }],
        } as never,
      }),
    );
    expect(s.placement.groups[3]!.epoch).toBe(2n);
    expect(s.placement.groups[3]!.members.map((m) => m.storeId)).toEqual(['s0']);
    expect(s.placement.groups[2]!.epoch).toBe(1n);
    // The count is fixed by the first entry.
    expect(s.placement.groupCount).toBe(8);
  });

  it('keeps extra replicas only for blobs that have them, and survives a snapshot', () => {
    const s = placed();
    s.apply(
      entry(2n, {
        case: 'extraReplicasChanged',
        value: { blobId: 'hot', added: [{ storeId: 's3', volumeId: 1 }], targetReplicaCount: 4 } as never,
      }),
    );
    expect(s.placement.extras.get('hot')!.replicas.map((r) => r.storeId)).toEqual(['s3']);
    const copy = MetadataState.fromSnapshot(s.toSnapshot());
    expect(copy.placement.extras.get('hot')!.targetReplicaCount).toBe(4);
    expect(copy.placement.groups).toEqual(s.placement.groups);
    s.apply(entry(3n, { case: 'extraReplicasChanged', value: { blobId: 'hot', clear: true } as never }));
    expect(s.placement.extras.has('hot')).toBe(false);
  });

  it('a view without per-blob records skips blob entries', () => {
    const s = new MetadataState({ perBlob: false });
    s.apply(
      entry(1n, {
        case: 'blobCommitted',
        value: { blob: { blobId: 'x', replicas: [{ storeId: 'a', volumeId: 1 }] } } as never,
      }),
    );
    expect(s.blobs.size).toBe(0);
    expect(s.appliedIndex).toBe(1n);
  });
});
