import { afterEach, describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import type { ReplicationManager } from '../../../internal/replication/manager.js';
import { until } from './fakes.js';
import { ALL_ACTIVE, idInGroup, S4_JOINING, startedPlacement } from './placement-fakes.js';

const managers: ReplicationManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.stop();
});

describe('anti-entropy between the members of a placement group', () => {
  it('RunAudit copies a write that reached one member only, and a delete that reached one member only, to the others', async () => {
    const { fs, m } = await startedPlacement(managers, [ALL_ACTIVE, ALL_ACTIVE]);
    const [partial, deleted, fine] = [idInGroup(0, 2, 0), idInGroup(1, 2, 0), idInGroup(1, 2, 1)] as [
      string,
      string,
      string,
    ];
    fs.write(['s1'], partial); // its gateway died after the first member
    fs.write(['s1', 's2', 's3'], deleted);
    fs.remove(['s2'], deleted);
    fs.write(['s1', 's2', 's3'], fine);
    const res = await m.audit();
    expect(res.tasksEnqueued).toBe(4n);
    for (const s of ['s2', 's3']) expect(fs.get(s, partial)).toEqual(fs.get('s1', partial));
    for (const s of ['s1', 's3']) expect(fs.get(s, deleted)).toEqual(fs.get('s2', deleted));
    expect(fs.get('s1', deleted)?.deleted).toBe(true);
    expect(fs.replicateCalls.every((c) => c.keepStamp)).toBe(true);
    expect(fs.replicateCalls.some((c) => c.blobId === fine)).toBe(false);
    expect(m.antiEntropy.last?.mismatched).toEqual([0, 1]);
    // Converged: the next round finds nothing and lists nothing.
    const lists = fs.listCalls;
    const again = await m.antiEntropy.round(100);
    expect(again.mismatched).toEqual([]);
    expect(fs.listCalls).toBe(lists);
  });

  it('a periodic round syncs at most ANTI_ENTROPY_GROUPS groups, taking turns', async () => {
    const { fs, m } = await startedPlacement(managers, [ALL_ACTIVE, ALL_ACTIVE, ALL_ACTIVE], {
      ANTI_ENTROPY_GROUPS: '1',
    });
    const ids = [0, 1, 2].map((g) => idInGroup(g, 3, 0));
    for (const id of ids) fs.write(['s1'], id);
    const first = await m.antiEntropy.round(1);
    expect(first.mismatched).toEqual([0, 1, 2]);
    expect(first.synced).toBe(1);
    const second = await m.antiEntropy.round(1);
    expect(second.mismatched.length).toBe(2);
    await m.antiEntropy.round(1);
    expect((await m.antiEntropy.round(1)).mismatched).toEqual([]);
    for (const id of ids) for (const s of ['s2', 's3']) expect(fs.live(s, id)).toBe(true);
  });

  it('leaves young needles (writes in flight) to the next round, skips DOWN members and groups being backfilled', async () => {
    // s4 does not answer, so its backfill cannot finish and group 1 stays JOINING.
    const { dir, fs, m } = await startedPlacement(
      managers,
      [ALL_ACTIVE, S4_JOINING],
      { ANTI_ENTROPY_SETTLE: '1h' },
      (f) => f.down.add('s4'),
    );
    const young = idInGroup(0, 2, 0);
    fs.on('s1').set(young, { stamp: Date.now(), deleted: false, cookie: 7n, data: 'x', corrupt: false });
    const r = await m.antiEntropy.round(10);
    expect(r.groupsCompared).toBe(1); // group 1 has a JOINING member: the backfill's
    expect(r.mismatched).toEqual([0]);
    expect(fs.get('s2', young)).toBeUndefined();
    // A DOWN member is not compared (and not copied to).
    dir.setHealth('s2', StoreHealth.DOWN);
    dir.setHealth('s3', StoreHealth.DOWN);
    await until(() => m.mirror.stores.get('s3')?.health === StoreHealth.DOWN);
    expect((await m.antiEntropy.round(10)).mismatched).toEqual([]);
  });
});
