import { afterEach, describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { PlacementMemberState } from '../../../gen/haystack/v1/metadata_pb.js';
import type { ReplicationManager } from '../../../internal/replication/manager.js';
import { until } from './fakes.js';
import { idInGroup, placementSetup, S4_JOINING } from './placement-fakes.js';

const managers: ReplicationManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.stop();
});

function setup(
  groups: [string, 'A' | 'J'][][],
  env: Record<string, string> = {},
  clocks: { now?: () => number } = {},
) {
  const t = placementSetup(groups, env, undefined, clocks);
  managers.push(t.m);
  const state = (group: number, storeId: string) =>
    t.dir.state.placement.groups[group]?.members.find((m) => m.storeId === storeId)?.state;
  return { ...t, state };
}

describe('backfill of JOINING placement-group members', () => {
  it('copies every needle of the group the joining member lacks or holds older, tombstones with their stamp, then makes it ACTIVE', async () => {
    const { dir, fs, m, state } = setup([
      [
        ['s1', 'A'],
        ['s2', 'A'],
        ['s4', 'J'],
      ],
      [
        ['s1', 'A'],
        ['s2', 'A'],
        ['s3', 'A'],
      ],
    ]);
    const [a, b, d, x, other] = [
      idInGroup(0, 2, 0),
      idInGroup(0, 2, 1),
      idInGroup(0, 2, 2),
      idInGroup(0, 2, 3),
      idInGroup(1, 2, 0),
    ] as [string, string, string, string, string];
    fs.write(['s1', 's2'], a);
    fs.write(['s1', 's2'], b);
    fs.write(['s1', 's2'], d);
    fs.remove(['s1', 's2'], d);
    fs.write(['s1', 's2', 's3'], other);
    // A write since s4 joined reached it directly; an old version of b sits there too.
    fs.on('s4').set(b, { ...(fs.get('s1', b) as NonNullable<ReturnType<typeof fs.get>>), stamp: 1 });
    fs.write(['s1', 's2', 's4'], x);
    m.start();
    await until(() => state(0, 's4') === PlacementMemberState.ACTIVE, 5_000, 's4 ACTIVE');
    for (const id of [a, b, x]) expect(fs.get('s4', id)).toEqual(fs.get('s1', id));
    expect(fs.get('s4', d)).toMatchObject({ deleted: true, stamp: fs.get('s1', d)?.stamp });
    // Only the group's needles; live ones with keep_stamp; x was not copied (held already).
    expect(fs.get('s4', other)).toBeUndefined();
    expect(fs.replicateCalls.every((c) => c.keepStamp && c.to === 's4')).toBe(true);
    expect(fs.replicateCalls.map((c) => c.blobId).sort()).toEqual([a, b].sort());
    expect(dir.placementUpdates).toBe(1);
    expect(dir.state.placement.groups[0]?.members.map((mm) => mm.storeId)).toEqual(['s1', 's2', 's4']);
    expect(m.backfill.promotedTotal).toBe(1);
  });

  it('the final comparison finds a write that reached only the ACTIVE members during the pass', async () => {
    const { fs, m, state } = setup([
      [
        ['s1', 'A'],
        ['s2', 'A'],
        ['s4', 'J'],
      ],
    ]);
    fs.write(['s1', 's2'], 'early');
    let injected = false;
    fs.afterReplicate = async () => {
      if (injected) return;
      injected = true;
      // Its delivery to the joining store failed (the gateway died mid-write).
      fs.write(['s1', 's2'], 'late');
    };
    m.start();
    await until(() => state(0, 's4') === PlacementMemberState.ACTIVE, 5_000, 's4 ACTIVE');
    expect(injected).toBe(true);
    expect(fs.get('s4', 'late')).toEqual(fs.get('s1', 'late'));
    expect(fs.get('s4', 'early')).toEqual(fs.get('s1', 'early'));
  });

  it('re-reads the group when UpdatePlacement finds its epoch moved, keeping the other change', async () => {
    const { dir, fs, m, state } = setup([
      [
        ['s1', 'A'],
        ['s2', 'A'],
        ['s4', 'J'],
      ],
    ]);
    fs.write(['s1', 's2'], 'n1');
    let moved = false;
    dir.beforePlacementUpdate = () => {
      if (moved) return;
      moved = true;
      // An operator adds s5 meanwhile.
      dir.setGroup(0, [
        ['s1', 'A'],
        ['s2', 'A'],
        ['s4', 'J'],
        ['s5', 'J'],
      ]);
    };
    m.start();
    await until(
      () => state(0, 's4') === PlacementMemberState.ACTIVE && state(0, 's5') === PlacementMemberState.ACTIVE,
      5_000,
      's4 and s5 ACTIVE',
    );
    expect(moved).toBe(true);
    expect(fs.get('s5', 'n1')).toEqual(fs.get('s1', 'n1'));
    expect(dir.state.placement.groups[0]?.members.map((mm) => mm.storeId)).toEqual(['s1', 's2', 's4', 's5']);
  });

  it('leaves a member JOINING while it is not HEALTHY, and backfills it once it is', async () => {
    const { dir, fs, m, state } = setup([
      [
        ['s1', 'A'],
        ['s2', 'A'],
        ['s4', 'J'],
      ],
    ]);
    fs.write(['s1', 's2'], 'n1');
    dir.setHealth('s4', StoreHealth.DOWN);
    m.start();
    await until(() => m.active && m.mirror.loaded);
    expect(await m.backfill.runAll()).toBe(0);
    expect(state(0, 's4')).toBe(PlacementMemberState.JOINING);
    dir.setHealth('s4', StoreHealth.HEALTHY);
    await until(() => state(0, 's4') === PlacementMemberState.ACTIVE, 5_000, 's4 ACTIVE');
    expect(fs.live('s4', 'n1')).toBe(true);
  });

  it('promotes a member that missed nothing (demoted during a brief DOWN) without listing or copying', async () => {
    const { dir, fs, m, state } = setup([S4_JOINING]);
    fs.write(['s1', 's2', 's4'], idInGroup(0, 1, 0));
    fs.write(['s1', 's2', 's4'], idInGroup(0, 1, 1));
    fs.remove(['s1', 's2', 's4'], idInGroup(0, 1, 1));
    m.start();
    await until(() => state(0, 's4') === PlacementMemberState.ACTIVE, 5_000, 's4 ACTIVE');
    expect(fs.listCalls).toBe(0);
    expect(fs.replicateCalls).toEqual([]);
    expect(dir.placementUpdates).toBe(1);
  });

  it('backfills several groups at once, not one group after another', async () => {
    const groups = Array.from({ length: 8 }, () => S4_JOINING);
    const { fs, m, state } = setup(groups);
    for (let g = 0; g < 8; g++) fs.write(['s1', 's2'], idInGroup(g, 8, 0));
    // Each copy waits until a copy of another group has landed too: one group at a time never gets there.
    const copied = new Set<string>();
    let release = () => {};
    const gate = new Promise<void>((r) => {
      release = r;
    });
    fs.afterReplicate = async (_store, blobId) => {
      copied.add(blobId);
      if (copied.size >= 2) release();
      await gate;
    };
    try {
      m.start();
      await until(
        () => groups.every((_, g) => state(g, 's4') === PlacementMemberState.ACTIVE),
        10_000,
        'every group ACTIVE on s4',
      );
    } finally {
      release();
    }
    for (let g = 0; g < 8; g++) expect(fs.live('s4', idInGroup(g, 8, 0))).toBe(true);
  });

  it('compares a member only once its store has been HEALTHY for BACKFILL_SETTLE: a write that skipped it and was acknowledged meanwhile is copied', async () => {
    // Gateways acknowledge a write that skipped s4 (JOINING and DOWN when planned) only on
    // a map confirmed current within MAP_STALE_AFTER: here at most ~100 ms after s4 is
    // back. BACKFILL_SETTLE (400 ms) is longer.
    const { dir, fs, m, state } = setup([S4_JOINING], { BACKFILL_SETTLE: '400ms' });
    const [early, late] = [idInGroup(0, 1, 0), idInGroup(0, 1, 1)];
    fs.write(['s1', 's2', 's4'], early);
    dir.setHealth('s4', StoreHealth.DOWN);
    m.start();
    await until(() => m.active && m.mirror.loaded);
    // The write planned without s4 lands on s1 and s2 just after the members' digests are
    // read (or ~100 ms after s4 is back, if nothing reads them before).
    let landed = false;
    const land = () => {
      if (landed) return;
      landed = true;
      fs.write(['s1', 's2'], late);
    };
    const back = Date.now();
    let reads = 0;
    let comparedAfter: number | undefined;
    fs.afterDigests = () => {
      comparedAfter ??= Date.now() - back;
      if (++reads === 3) land();
    };
    let promotedAfter: number | undefined;
    dir.beforePlacementUpdate = () => {
      promotedAfter ??= Date.now() - back;
    };
    dir.setHealth('s4', StoreHealth.HEALTHY);
    const timer = setTimeout(land, 100);
    try {
      await until(() => state(0, 's4') === PlacementMemberState.ACTIVE, 5_000, 's4 ACTIVE');
      expect(landed).toBe(true);
      // ACTIVE with the acknowledged write (without the settle time: promoted on equal digests without it).
      expect(fs.get('s4', late)).toEqual(fs.get('s1', late));
      expect(fs.get('s4', early)).toEqual(fs.get('s1', early));
      // Neither compared nor promoted before the settle time.
      expect(comparedAfter).toBeGreaterThanOrEqual(400);
      expect(promotedAfter).toBeGreaterThanOrEqual(400);
    } finally {
      clearTimeout(timer);
    }
  });

  it.each([
    ['back an hour: the promotion does not stall', -3_600_000],
    ['forward an hour: no compare before the settle time', 3_600_000],
  ])('times BACKFILL_SETTLE on a monotonic clock, the wall clock stepped %s', async (_what, step) => {
    let stepMs = 0;
    const { dir, fs, m, state } = setup(
      [S4_JOINING],
      { BACKFILL_SETTLE: '400ms' },
      { now: () => Date.now() + stepMs },
    );
    fs.write(['s1', 's2', 's4'], idInGroup(0, 1, 0));
    dir.setHealth('s4', StoreHealth.DOWN);
    m.start();
    await until(() => m.active && m.mirror.loaded);
    let comparedAfter: number | undefined;
    const back = performance.now();
    fs.afterDigests = () => {
      comparedAfter ??= performance.now() - back;
    };
    dir.setHealth('s4', StoreHealth.HEALTHY);
    await until(
      () => m.mirror.stores.get('s4')?.health === StoreHealth.HEALTHY,
      5_000,
      's4 HEALTHY in the mirror',
    );
    // NTP (or an operator) steps the manager's wall clock while s4 settles, and something
    // (a heartbeat, a pass) looks at the joining member again.
    stepMs = step;
    m.monitor.kickBackfill();
    // On the wall clock the settle time would have an hour left, or be over already.
    await until(() => state(0, 's4') === PlacementMemberState.ACTIVE, 5_000, 's4 ACTIVE');
    expect(comparedAfter).toBeGreaterThanOrEqual(400);
  });

  it('does not promote a member whose store went DOWN (and came back) during its final comparison: a write made without it meanwhile is copied first', async () => {
    const { dir, fs, m, state } = setup([S4_JOINING], { BACKFILL_SETTLE: '200ms' });
    const [early, late] = [idInGroup(0, 1, 0), idInGroup(0, 1, 1)];
    fs.write(['s1', 's2', 's4'], early);
    let reads = 0;
    fs.afterDigests = async () => {
      if (++reads !== 3) return;
      // Every member's digest read (equal). s4's heartbeat lapses: gateways write without
      // it (it is JOINING and DOWN, their check passes), then it is back.
      dir.setHealth('s4', StoreHealth.DOWN);
      fs.write(['s1', 's2'], late);
      dir.setHealth('s4', StoreHealth.HEALTHY);
      await until(() => m.mirror.appliedIndex === dir.state.appliedIndex, 2_000, 'the mirror has the flap');
    };
    m.start();
    await until(() => state(0, 's4') === PlacementMemberState.ACTIVE, 5_000, 's4 ACTIVE');
    expect(fs.get('s4', late)).toEqual(fs.get('s1', late));
    expect(reads).toBeGreaterThan(3); // compared again after the flap's settle time
  });
});
