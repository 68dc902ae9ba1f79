import { afterEach, describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { TaskKind, TaskState } from '../../../gen/haystack/v1/replication_pb.js';
import { ReplicationManager } from '../../../internal/replication/manager.js';
import { createLogger } from '../../../internal/server/logger.js';
import { FakeDirectory, FakeStores, Gate, testConfig, until } from './fakes.js';

const managers: ReplicationManager[] = [];

function setup(env: Record<string, string> = {}, stores = ['s1', 's2', 's3', 's4', 's5']) {
  const cfg = testConfig(env);
  const dir = new FakeDirectory();
  const fs = new FakeStores();
  for (const [i, s] of stores.entries()) dir.addStore(s, `z${i % 3}`);
  const m = new ReplicationManager({
    cfg,
    log: createLogger('replication', 'test', 'silent'),
    directory: dir,
    stores: (s) => fs.client(s.address),
    lease: undefined,
  });
  managers.push(m);
  const blob = (id: string, on: string[]) => {
    for (const s of on) fs.put(s, id);
    dir.commit(id, on);
  };
  return { cfg, dir, fs, m, blob };
}

afterEach(async () => {
  for (const m of managers.splice(0)) await m.stop();
});

describe('ReplicationManager (fake directory and stores)', () => {
  it('raises a hot blob to the maximum, then back to the default after the grace period, one removal at a time', async () => {
    const { dir, fs, m, blob } = setup();
    blob('hot', ['s1', 's2', 's3']);
    blob('cold', ['s1', 's2', 's3']);
    m.start();
    await until(() => m.mirror.loaded && m.active);
    // 750 reads per minute (high threshold: 150).
    const feed = setInterval(() => m.report('s1', 400, [['hot', 5]]), 400);
    m.report('s1', 400, [['hot', 5]]);
    try {
      await until(() => dir.holders('hot').length === 5, 5_000, 'hot blob at 5 replicas');
      expect(dir.state.active('hot')?.targetReplicaCount).toBe(5);
      expect(dir.holders('hot')).toEqual(['s1', 's2', 's3', 's4', 's5']);
      for (const s of ['s4', 's5']) expect(fs.has(s, 'hot')).toBe(true);
    } finally {
      clearInterval(feed);
    }
    // Removals go one at a time: never two running for the blob at once.
    let maxConcurrent = 0;
    await until(
      () => {
        const running = m.queue
          .forBlob('hot')
          .filter((t) => t.kind === TaskKind.REMOVE && t.state === TaskState.RUNNING).length;
        maxConcurrent = Math.max(maxConcurrent, running);
        return dir.holders('hot').length === 3;
      },
      8_000,
      'hot blob back at 3',
    );
    expect(maxConcurrent).toBeLessThanOrEqual(1);
    // Each step removed exactly one replica, and no step was refused as stale.
    expect(dir.updates).toBe(1 + 2 + 1 + 2); // target up, 2 copies, target down, 2 removals
    expect(dir.state.active('hot')?.targetReplicaCount).toBe(3);
    // Removed replicas were tombstoned on their stores.
    const gone = ['s1', 's2', 's3', 's4', 's5'].filter((s) => !dir.holders('hot').includes(s));
    for (const s of gone) expect(fs.has(s, 'hot')).toBe(false);
    expect(dir.holders('cold')).toEqual(['s1', 's2', 's3']);
  });

  it('brings every blob of a DOWN store back to its target on the others', async () => {
    const { dir, fs, m, blob } = setup();
    for (let i = 0; i < 20; i++) blob(`b${i}`, ['s1', 's2', 's3']);
    m.start();
    await until(() => m.mirror.loaded && m.active);
    fs.down.add('s2');
    dir.setHealth('s2', StoreHealth.DOWN);
    await until(
      () => [...Array(20).keys()].every((i) => dir.holders(`b${i}`).filter((s) => s !== 's2').length === 3),
      5_000,
      'all blobs at 3 live replicas',
    );
    for (let i = 0; i < 20; i++) {
      const live = dir.holders(`b${i}`).filter((s) => s !== 's2');
      for (const s of live) expect(fs.has(s, `b${i}`)).toBe(true);
    }
  });

  it('places a copy elsewhere when the preferred store refuses the blob (ALREADY_EXISTS)', async () => {
    const { dir, fs, m, blob } = setup();
    blob('t', ['s1', 's2', 's3']);
    // s4 (zone z0, the zone s1 leaves empty) holds other content under this id and refuses it.
    fs.refuse('s4', 't');
    m.start();
    await until(() => m.mirror.loaded && m.active);
    fs.down.add('s1');
    dir.setHealth('s1', StoreHealth.DOWN);
    await until(() => dir.holders('t').includes('s5'), 5_000, 'copy on s5');
    expect(dir.holders('t')).toEqual(['s1', 's2', 's3', 's5']);
    await new Promise((r) => setTimeout(r, 300));
    // Refused once, then never tried again.
    expect(m.queue.list(TaskState.FAILED, 100).filter((t) => t.storeId === 's4')).toHaveLength(1);
    expect(m.queue.pending).toBe(0);
  });

  it('copies a blob back onto a store it removed (tombstoned) the blob from', async () => {
    const { dir, fs, m, blob } = setup({}, ['s1', 's2', 's3', 's4']);
    // Four replicas, target 3: one is removed, and its store holds a tombstone.
    blob('x', ['s1', 's2', 's3', 's4']);
    m.start();
    await until(() => dir.holders('x').length === 3, 5_000, 'one replica removed');
    const [removed] = ['s1', 's2', 's3', 's4'].filter((s) => !dir.holders('x').includes(s));
    expect(fs.has(removed!, 'x')).toBe(false);
    // A holder dies: the only store left to copy to is the one that tombstoned the blob.
    const dead = dir.holders('x')[0]!;
    fs.down.add(dead);
    dir.setHealth(dead, StoreHealth.DOWN);
    await until(() => dir.holders('x').includes(removed!), 5_000, `copy back on ${removed}`);
    expect(dir.holders('x').filter((s) => s !== dead)).toHaveLength(3);
    for (const s of dir.holders('x').filter((h) => h !== dead)) expect(fs.has(s, 'x'), s).toBe(true);
  });

  it('does not spin on a store that refuses a copy outright; the copy goes elsewhere', async () => {
    const { dir, fs, m, blob } = setup({ RETRY_BACKOFF_MAX: '2s' });
    // s3 (zone z2) is the first choice for a blob on s1 (z0) and s2 (z1), and refuses.
    blob('a', ['s1', 's2']);
    fs.deposing.add('s3');
    m.start();
    await until(() => dir.holders('a').length === 3, 5_000, 'copy placed');
    expect(dir.holders('a')).not.toContain('s3');
    await new Promise((r) => setTimeout(r, 500));
    expect(m.queue.list(TaskState.FAILED, 1000).filter((t) => t.storeId === 's3').length).toBeLessThanOrEqual(
      1,
    );
  });

  it('repairs a corrupt replica from a good one', async () => {
    const { dir, fs, m, blob } = setup();
    blob('x', ['s1', 's2', 's3']);
    m.start();
    await until(() => m.mirror.loaded && m.active);
    const n = fs.on('s2').get('x');
    if (n) n.corrupt = true;
    expect(m.reportCorruption('s2', ['x'])).toBe(1);
    await until(() => !dir.holders('x').includes('s2') && dir.holders('x').length === 3, 5_000, 'repair');
    expect(fs.has('s2', 'x')).toBe(false);
    expect(fs.replicateCalls.every((c) => c.from !== 's2')).toBe(true);
    expect(m.queue.list(TaskState.DONE, 10).some((t) => t.kind === TaskKind.REPAIR)).toBe(true);
  });

  it('repairs nothing for a corrupt needle that a later copy superseded', async () => {
    const { fs, m, blob } = setup();
    blob('x', ['s1', 's2', 's3']);
    // s2 held a corrupt copy once, was repaired, and took a fresh copy since.
    fs.superseded.set('s2', new Set(['x']));
    fs.on('s3').get('x')!.corrupt = true;
    m.start();
    await until(() => m.mirror.loaded && m.active);
    await m.monitor.scrubAll();
    const repairs = [
      ...m.queue.forBlob('x'),
      ...m.queue.list(TaskState.DONE, 100),
      ...m.queue.list(TaskState.FAILED, 100),
    ].filter((t) => t.blobId === 'x' && t.kind === TaskKind.REPAIR);
    expect(repairs.map((t) => t.storeId)).toEqual(['s3']);
  });

  it('collects an orphan needle after the grace period, never one whose commit is in flight', async () => {
    const { dir, fs, m, blob } = setup();
    blob('kept', ['s1', 's2', 's3']);
    fs.put('s4', 'orphan', Date.now());
    fs.put('s4', 'inflight', Date.now() - 10_000);
    dir.inflight.add('inflight');
    m.start();
    await until(() => m.mirror.loaded && m.active);
    await new Promise((r) => setTimeout(r, 300));
    expect(fs.has('s4', 'orphan')).toBe(true); // younger than the grace period
    await until(() => !fs.has('s4', 'orphan'), 3_000, 'orphan collected');
    expect(fs.has('s4', 'inflight')).toBe(true);
    for (const s of ['s1', 's2', 's3']) expect(fs.has(s, 'kept')).toBe(true);
  });

  it('opens the breaker of a failing store and places the copy elsewhere', async () => {
    const { dir, fs, m, blob } = setup({
      BREAKER_THRESHOLD: '2',
      BREAKER_OPEN_TIME: '60s',
      TASK_RETRIES: '1',
    });
    // s3 (zone z2) is the first choice for blobs on s1 (z0) and s2 (z1), and it fails.
    blob('a', ['s1', 's2']);
    blob('b', ['s1', 's2']);
    fs.failing.add('s3');
    m.start();
    await until(() => dir.holders('a').length === 3 && dir.holders('b').length === 3, 5_000, 'copies placed');
    expect(dir.holders('a')).not.toContain('s3');
    expect(dir.holders('b')).not.toContain('s3');
    expect(m.queue.breakerStates(Date.now()).find((b) => b.storeId === 's3')?.open).toBe(true);
  });
});

/**
 * A copy onto a store and a tombstone sent to the same store for the same blob
 * must never interleave: a tombstone landing between a copy's Replicate and its
 * commit leaves the directory listing a replica the store has deleted. Each test
 * holds the answers of the fakes so that the unsafe interleaving happens if the
 * manager allows it; a manager that serialises the pair makes the gate wait in
 * vain (its fallback then lets it through).
 */
describe('ReplicationManager: copies and tombstones on one (blob, store) pair', () => {
  const quiet = { GC_INTERVAL: '1h', MONITORING_INTERVAL: '1h' };
  const stores4 = ['s1', 's2', 's3', 's4'];

  /** Every replica the directory lists is held live by its store. */
  function expectListedHeld(dir: FakeDirectory, fs: FakeStores, blobId: string): void {
    for (const s of dir.holders(blobId))
      expect(fs.has(s, blobId), `${s} is listed and holds ${blobId}`).toBe(true);
  }

  it('a collection on a store and a repair copy to it', async () => {
    const { dir, fs, m, blob } = setup(quiet, stores4);
    blob('x', ['s1', 's2', 's3']);
    // s4 holds an orphan copy of x (an earlier copy whose commit was lost).
    fs.put('s4', 'x', Date.now() - 60_000);
    const verified = new Gate();
    const collected = new Gate();
    let verifies = 0;
    // The collection's re-check answers "unreferenced" but slowly: the copy onto s4
    // is applied meanwhile, and its commit waits until the tombstone landed.
    dir.afterVerify = async (storeId, ids) => {
      if (storeId === 's4' && ids.includes('x') && ++verifies === 2) await verified.pass(300);
    };
    fs.afterReplicate = async (storeId, blobId) => {
      if (storeId !== 's4' || blobId !== 'x') return;
      verified.open();
      await collected.pass(300);
    };
    fs.onDelete = (storeId, blobId) => {
      if (storeId === 's4' && blobId === 'x') collected.open();
    };
    m.start();
    await until(() => m.mirror.loaded && m.active);
    await m.blobs.orphans.pass();
    await until(() => verified.entered, 5_000, 'the collection re-checking x on s4');
    // s2's copy is corrupt: the repair drops it and copies onto s4, the only store left.
    fs.on('s2').get('x')!.corrupt = true;
    m.reportCorruption('s2', ['x']);
    await until(
      () => m.queue.pending === 0 && !dir.holders('x').includes('s2') && dir.holders('x').length === 3,
      5_000,
      'repair done',
    );
    expect(dir.holders('x')).toEqual(['s1', 's3', 's4']);
    expectListedHeld(dir, fs, 'x');
  });

  it('a removal from a store and a repair copy to it', async () => {
    const { dir, fs, m, blob } = setup(quiet, stores4);
    // Four replicas for a target of 3: one is removed.
    blob('x', stores4);
    const committed = new Gate();
    const removed = new Gate();
    let victim = '';
    // The removal's commit is answered slowly: the repair copies onto the removed
    // store meanwhile, and that copy's commit waits until the tombstone landed.
    dir.afterUpdate = async (req) => {
      if (victim === '' && req.removeStoreIds.length === 1) {
        victim = req.removeStoreIds[0]!;
        await committed.pass(300);
      }
    };
    fs.afterReplicate = async (storeId, blobId) => {
      if (storeId !== victim || blobId !== 'x') return;
      committed.open();
      await removed.pass(300);
    };
    fs.onDelete = (storeId, blobId) => {
      if (storeId === victim && blobId === 'x') removed.open();
    };
    m.start();
    await until(() => committed.entered, 5_000, 'the removal committed');
    await until(() => !m.mirror.blob('x')?.replicas.some((r) => r.storeId === victim), 5_000, 'mirror');
    // A copy that is not the victim's goes corrupt: the repair's only destination is the victim.
    const bad = stores4.find((s) => s !== victim)!;
    fs.on(bad).get('x')!.corrupt = true;
    m.reportCorruption(bad, ['x']);
    await until(
      () => m.queue.pending === 0 && !dir.holders('x').includes(bad) && dir.holders('x').length === 3,
      5_000,
      'repair done',
    );
    expect(dir.holders('x')).toContain(victim);
    expectListedHeld(dir, fs, 'x');
  });
});
