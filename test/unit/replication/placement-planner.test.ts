import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { PlacementGroupSchema, PlacementMemberState } from '../../../gen/haystack/v1/metadata_pb.js';
import { type NeedleFacts, NeedleFactsSchema } from '../../../gen/haystack/v1/store_pb.js';
import type { PlacementContext, StoreView } from '../../../internal/replication/placement.js';
import {
  activeSources,
  mismatchedGroups,
  newer,
  planExtras,
  planGroupRepair,
  promoted,
  wantedExtras,
} from '../../../internal/replication/placement-planner.js';

const { ACTIVE, JOINING } = PlacementMemberState;

function ctx(stores: [string, string, StoreHealth?][]): PlacementContext {
  const m = new Map<string, StoreView>();
  for (const [id, zone, health] of stores) {
    m.set(id, {
      storeId: id,
      address: id,
      zone,
      health: health ?? StoreHealth.HEALTHY,
      freeBytes: 1n << 40n,
    });
  }
  return { stores: m, load: () => 0 };
}

function group(members: [string, PlacementMemberState][], n = 0) {
  return create(PlacementGroupSchema, {
    group: n,
    members: members.map(([storeId, state]) => ({ storeId, state })),
    epoch: 5n,
  });
}

function needle(blobId: string, stamp: number, deleted = false): NeedleFacts {
  return create(NeedleFactsSchema, { blobId, writtenAtMs: BigInt(stamp), deleted, cookie: 7n });
}

const g3 = group([
  ['a', ACTIVE],
  ['b', ACTIVE],
  ['c', ACTIVE],
]);
const six = ctx([
  ['a', 'z0'],
  ['b', 'z1'],
  ['c', 'z2'],
  ['d', 'z0'],
  ['e', 'z1'],
  ['f', 'z3'],
]);

describe('placement planner', () => {
  it('wants extras only beyond the group size, counting JOINING members', () => {
    expect(wantedExtras(3, g3)).toBe(0);
    expect(wantedExtras(5, g3)).toBe(2);
    expect(
      wantedExtras(
        4,
        group([
          ...g3.members.map((m) => [m.storeId, m.state] as [string, PlacementMemberState]),
          ['d', JOINING],
        ]),
      ),
    ).toBe(0);
  });

  it('adds extras on non-members, the emptiest zone first, and nothing while a removal runs', () => {
    const base = {
      target: 4,
      group: g3,
      extras: [],
      copying: [],
      removing: false,
      exclude: new Set<string>(),
    };
    const p = planExtras(base, six);
    expect(p).toMatchObject({ kind: 'add' });
    expect(p.kind === 'add' && p.stores.map((s) => s.storeId)).toEqual(['f']);
    const two = planExtras({ ...base, target: 5 }, six);
    expect(two.kind === 'add' && two.stores.map((s) => s.storeId).sort()).toEqual(['d', 'f']);
    expect(planExtras({ ...base, copying: ['f'] }, six)).toEqual({ kind: 'none' });
    expect(planExtras({ ...base, removing: true }, six)).toEqual({ kind: 'none' });
    const ex = planExtras({ ...base, exclude: new Set(['f']) }, six);
    expect(ex.kind === 'add' && ex.stores[0]?.storeId).not.toBe('f');
  });

  it('removes one extra at a time, a DOWN one first, never a member', () => {
    const down = ctx([
      ['a', 'z0'],
      ['b', 'z1'],
      ['c', 'z2'],
      ['d', 'z0', StoreHealth.DOWN],
      ['e', 'z1'],
      ['f', 'z3'],
    ]);
    const base = {
      target: 3,
      group: g3,
      extras: ['d', 'e'],
      copying: [],
      removing: false,
      exclude: new Set<string>(),
    };
    expect(planExtras(base, down)).toEqual({ kind: 'remove', storeId: 'd' });
    const p = planExtras({ ...base, extras: ['e'] }, down);
    expect(p).toEqual({ kind: 'remove', storeId: 'e' });
    expect(planExtras({ ...base, removing: true }, down)).toEqual({ kind: 'none' });
    // A DOWN extra does not count as live: a replacement is placed while it is still listed.
    const r = planExtras({ ...base, target: 5 }, down);
    expect(r.kind === 'add' && r.stores.map((s) => s.storeId)).toEqual(['f']);
  });

  it('replaces an extra on a draining store before removing it, and never copies onto a draining store', () => {
    const c = { ...six, stores: new Map(six.stores) };
    const drain = (id: string) => {
      const v = c.stores.get(id)!;
      c.stores.set(id, { ...v, draining: true });
    };
    drain('d');
    drain('f');
    const base = {
      target: 4,
      group: g3,
      extras: ['d'],
      copying: [],
      removing: false,
      exclude: new Set<string>(),
    };
    // The draining extra does not count: a copy goes to e (f is draining too).
    const add = planExtras(base, c);
    expect(add.kind === 'add' && add.stores.map((s) => s.storeId)).toEqual(['e']);
    // Nothing is removed while the copy runs.
    expect(planExtras({ ...base, copying: ['e'] }, c)).toEqual({ kind: 'none' });
    // Once e is listed, the draining extra goes.
    expect(planExtras({ ...base, extras: ['d', 'e'] }, c)).toEqual({ kind: 'remove', storeId: 'd' });
  });

  it('reads from ACTIVE members only, HEALTHY first', () => {
    const g = group([
      ['a', ACTIVE],
      ['b', JOINING],
      ['c', ACTIVE],
    ]);
    const c = ctx([
      ['a', 'z0', StoreHealth.DEGRADED],
      ['b', 'z1'],
      ['c', 'z2'],
    ]);
    expect(activeSources(g, c).map((s) => s.storeId)).toEqual(['c', 'a']);
    expect(activeSources(g, c, new Set(['c'])).map((s) => s.storeId)).toEqual(['a']);
  });

  it('orders needles by stamp, a tombstone winning a tie', () => {
    expect(newer({ writtenAtMs: 2n, deleted: false }, { writtenAtMs: 1n, deleted: true })).toBe(true);
    expect(newer({ writtenAtMs: 1n, deleted: false }, { writtenAtMs: 2n, deleted: false })).toBe(false);
    expect(newer({ writtenAtMs: 2n, deleted: true }, { writtenAtMs: 2n, deleted: false })).toBe(true);
    expect(newer({ writtenAtMs: 2n, deleted: false }, { writtenAtMs: 2n, deleted: false })).toBe(false);
    expect(newer({ writtenAtMs: 2n, deleted: false }, undefined)).toBe(true);
  });

  it('copies the newest needle per id to every member lacking it or holding an older one', () => {
    const listings = new Map([
      [
        'a',
        new Map([
          ['x', needle('x', 10)],
          ['y', needle('y', 5)],
          ['z', needle('z', 7)],
        ]),
      ],
      [
        'b',
        new Map([
          ['x', needle('x', 10)],
          ['y', needle('y', 6, true)],
        ]),
      ],
      [
        'c',
        new Map([
          ['x', needle('x', 10)],
          ['w', needle('w', 99)],
        ]),
      ],
    ]);
    const plan = planGroupRepair(listings, { sources: new Set(['a', 'b', 'c']), settledBefore: 50n });
    const got = plan
      .map(
        (p) => `${p.needle.blobId}@${p.needle.writtenAtMs}${p.needle.deleted ? 'd' : ''}:${p.from}->${p.to}`,
      )
      .sort();
    // y: b's tombstone wins over a's older needle; z: only a has it; w: too young (in flight).
    expect(got).toEqual(['y@6d:b->a', 'y@6d:b->c', 'z@7:a->b', 'z@7:a->c']);
    // A member that is no source (JOINING) receives but never gives.
    const fromA = planGroupRepair(listings, { sources: new Set(['a']), settledBefore: 1000n });
    expect(fromA.every((p) => p.from === 'a')).toBe(true);
    // (b's newer tombstone of y is not a source's, so c gets a's y; b is left alone.)
    expect(fromA.map((p) => `${p.needle.blobId}->${p.to}`).sort()).toEqual(['y->c', 'z->b', 'z->c']);
  });

  it('finds groups whose members’ digests differ (absent = empty)', () => {
    const groups = [
      g3,
      group(
        [
          ['a', ACTIVE],
          ['b', ACTIVE],
        ],
        1,
      ),
      group(
        [
          ['a', ACTIVE],
          ['c', ACTIVE],
        ],
        2,
      ),
    ];
    const d = (entries: [number, number, number][]) =>
      new Map(entries.map(([g, n, x]) => [g, { needles: BigInt(n), digest: BigInt(x) }]));
    const digests = new Map([
      [
        'a',
        d([
          [0, 2, 9],
          [1, 1, 4],
          [2, 1, 1],
        ]),
      ],
      [
        'b',
        d([
          [0, 2, 9],
          [1, 1, 5],
        ]),
      ],
      ['c', d([[0, 2, 9]])],
    ]);
    const all = (g: { members: { storeId: string }[] }) => g.members.map((m) => m.storeId);
    expect(mismatchedGroups(groups, digests, all)).toEqual([1, 2]);
    expect(mismatchedGroups(groups, new Map([['a', d([[1, 1, 4]])]]), all)).toEqual([]);
  });

  it('promotes a JOINING member in place, and only a JOINING one', () => {
    const g = group([
      ['a', ACTIVE],
      ['d', JOINING],
      ['b', ACTIVE],
    ]);
    expect(promoted(g, 'd')?.map((m) => [m.storeId, m.state])).toEqual([
      ['a', ACTIVE],
      ['d', ACTIVE],
      ['b', ACTIVE],
    ]);
    expect(promoted(g, 'a')).toBeUndefined();
    expect(promoted(g, 'zz')).toBeUndefined();
  });
});
