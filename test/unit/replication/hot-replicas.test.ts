import { afterEach, describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { TaskKind, TaskState } from '../../../gen/haystack/v1/replication_pb.js';
import type { ReplicationManager } from '../../../internal/replication/manager.js';
import { until } from './fakes.js';
import { placementSetup } from './placement-fakes.js';

const managers: ReplicationManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.stop();
});

const GROUP: [string, 'A'][] = [
  ['s1', 'A'],
  ['s2', 'A'],
  ['s3', 'A'],
];

function setup(env: Record<string, string> = {}) {
  const t = placementSetup([GROUP], env);
  managers.push(t.m);
  return t;
}

/** Feeds `rate` reads per minute of `id` from s1 until stopped. */
function feed(m: ReplicationManager, id: string, perReport = 5) {
  m.report('s1', 400, [[id, perReport]]);
  const timer = setInterval(() => m.report('s1', 400, [[id, perReport]]), 400);
  return () => clearInterval(timer);
}

describe('hot blobs in placement mode (extra replicas)', () => {
  it('gives a hot blob extra replicas copied with the members’ stamp, then removes them one at a time and tombstones them after the grace', async () => {
    const { dir, fs, m } = setup();
    const stamp = fs.write(['s1', 's2', 's3'], 'hot');
    fs.write(['s1', 's2', 's3'], 'cold');
    m.start();
    await until(() => m.mirror.loaded && m.active && m.placementMode);
    const stop = feed(m, 'hot'); // 750 reads/min: the maximum, 5
    try {
      await until(() => dir.extras('hot').length === 2, 5_000, 'two extras');
      expect(dir.extras('hot')).toEqual(['s4', 's5']);
      expect(dir.state.placement.extras.get('hot')?.targetReplicaCount).toBe(5);
      for (const s of ['s4', 's5']) {
        expect(fs.get(s, 'hot')).toMatchObject({ stamp, deleted: false, cookie: 7n });
      }
      expect(fs.replicateCalls.every((c) => c.keepStamp && ['s1', 's2', 's3'].includes(c.from))).toBe(true);
    } finally {
      stop();
    }
    // Cooling: one removal at a time; a store is tombstoned only once it is unlisted.
    let maxRemovals = 0;
    let tombstonedWhileListed = false;
    await until(
      () => {
        maxRemovals = Math.max(
          maxRemovals,
          m.queue.forBlob('hot').filter((t) => t.kind === TaskKind.REMOVE && t.state === TaskState.RUNNING)
            .length,
        );
        for (const s of dir.extras('hot')) if (fs.get(s, 'hot')?.deleted) tombstonedWhileListed = true;
        return (
          dir.extras('hot').length === 0 &&
          fs.get('s4', 'hot')?.deleted === true &&
          fs.get('s5', 'hot')?.deleted === true
        );
      },
      10_000,
      'extras removed and tombstoned',
    );
    expect(maxRemovals).toBeLessThanOrEqual(1);
    expect(tombstonedWhileListed).toBe(false);
    expect(dir.state.placement.extras.has('hot')).toBe(false);
    // Members untouched, the cold blob never got an extra.
    for (const s of ['s1', 's2', 's3']) expect(fs.live(s, 'hot')).toBe(true);
    expect(dir.extras('cold')).toEqual([]);
    expect(fs.replicateCalls.some((c) => c.blobId === 'cold')).toBe(false);
  }, 20_000);

  it('copies onto a store holding an old tombstone of the blob with a fresh stamp (keep_stamp would keep the tombstone)', async () => {
    const { dir, fs, m } = setup({ MAX_REPLICA_COUNT: '4' });
    const stamp = fs.write(['s1', 's2', 's3'], 'again');
    // s4 and s5 hold a tombstone newer than the needle (extras removed earlier).
    fs.on('s4').set('again', { stamp: stamp + 5, deleted: true, cookie: 0n, data: '', corrupt: false });
    fs.on('s5').set('again', { stamp: stamp + 5, deleted: true, cookie: 0n, data: '', corrupt: false });
    m.start();
    await until(() => m.mirror.loaded && m.active);
    const stop = feed(m, 'again');
    try {
      await until(() => dir.extras('again').length === 1, 5_000, 'one extra');
    } finally {
      stop();
    }
    const [s] = dir.extras('again');
    expect(fs.live(s as string, 'again')).toBe(true);
    expect(fs.replicateCalls.find((c) => c.to === s)?.keepStamp).toBe(false);
  });

  it('takes back an extra copy whose blob was deleted while it was copied', async () => {
    const { dir, fs, m } = setup({ MAX_REPLICA_COUNT: '4' });
    fs.write(['s1', 's2', 's3'], 'doomed');
    fs.afterReplicate = async (_store, blobId) => {
      if (blobId !== 'doomed' || fs.get('s1', 'doomed')?.deleted) return;
      // The gateway's delete lands meanwhile: the directory drops the record, the members get tombstones.
      dir.append({ case: 'extraReplicasChanged', value: { blobId: 'doomed', clear: true } });
      fs.remove(['s1', 's2', 's3'], 'doomed');
    };
    m.start();
    await until(() => m.mirror.loaded && m.active);
    const stop = feed(m, 'doomed');
    try {
      await until(() => fs.replicateCalls.length > 0, 5_000, 'a copy');
      const to = fs.replicateCalls[0]?.to as string;
      await until(
        () => fs.get(to, 'doomed')?.deleted === true && dir.extras('doomed').length === 0,
        5_000,
        'taken back',
      );
      // With the delete's own stamp, so it is the same tombstone as the members'.
      expect(fs.get(to, 'doomed')?.stamp).toBe(fs.get('s1', 'doomed')?.stamp);
    } finally {
      stop();
    }
  });

  it('replaces an extra replica whose store went DOWN, then unlists the DOWN one', async () => {
    const t = placementSetup([GROUP], {}, ['s1', 's2', 's3', 's4', 's5', 's6']);
    managers.push(t.m);
    const { dir, fs, m } = t;
    fs.write(['s1', 's2', 's3'], 'busy');
    m.start();
    await until(() => m.mirror.loaded && m.active);
    const stop = feed(m, 'busy');
    try {
      await until(() => dir.extras('busy').length === 2, 5_000, 'two extras');
      const [lost] = dir.extras('busy') as [string];
      fs.down.add(lost);
      dir.setHealth(lost, StoreHealth.DOWN);
      await until(
        () => dir.extras('busy').length === 2 && !dir.extras('busy').includes(lost),
        5_000,
        'the DOWN extra replaced and unlisted',
      );
      for (const s of dir.extras('busy')) expect(fs.live(s, 'busy')).toBe(true);
    } finally {
      stop();
    }
  });

  it('answers GetBlobStatus facts from Stat on the stores: members, joining members and extras', async () => {
    const { dir, fs, m } = setup({ MAX_REPLICA_COUNT: '4' });
    fs.write(['s1', 's2', 's3'], 'seen');
    m.start();
    await until(() => m.mirror.loaded && m.active);
    const stop = feed(m, 'seen');
    try {
      await until(() => dir.extras('seen').length === 1, 5_000, 'one extra');
    } finally {
      stop();
    }
    const st = await m.hot.replicas('seen');
    expect(st.found).toBe(true);
    expect(st.replicas.map((r) => [r.storeId, r.role])).toEqual([
      ['s1', 'member'],
      ['s2', 'member'],
      ['s3', 'member'],
      [dir.extras('seen')[0], 'extra'],
    ]);
    expect(st.replicas.every((r) => r.volumeId === 1)).toBe(true);
    expect((await m.hot.replicas('never-written')).found).toBe(false);
  });

  it('replaces a corrupt extra replica (unlisted, tombstoned, placed again) and never collects in placement mode', async () => {
    const { dir, fs, m } = setup({ MAX_REPLICA_COUNT: '4' });
    fs.write(['s1', 's2', 's3'], 'rot');
    fs.write(['s4'], 'orphan-on-s4');
    m.start();
    await until(() => m.mirror.loaded && m.active);
    const stop = feed(m, 'rot');
    try {
      await until(() => dir.extras('rot').length === 1, 5_000, 'one extra');
      const [bad] = dir.extras('rot') as [string];
      expect(m.reportCorruption(bad, ['rot'])).toBe(1);
      await until(() => fs.get(bad, 'rot')?.deleted === true, 5_000, 'corrupt extra tombstoned');
      await until(
        () => dir.extras('rot').length === 1 && fs.live(dir.extras('rot')[0] as string, 'rot'),
        5_000,
        'replaced',
      );
    } finally {
      stop();
    }
    expect(await m.blobs.orphans.pass()).toBe(0);
    expect(fs.live('s4', 'orphan-on-s4')).toBe(true);
  });
});
