import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryCluster, FakeStore, WriteLoad } from '../helpers/directory-cluster.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('directory followers: restart, catch-up, snapshots (real processes)', () => {
  let c: DirectoryCluster;
  let stores: FakeStore[];

  beforeAll(async () => {
    // Snapshot often and keep no log behind it, so a lagging follower needs a snapshot transfer.
    c = await DirectoryCluster.start({ env: { SNAPSHOT_INTERVAL: '300ms', LOG_RETAIN_ENTRIES: '0' } });
    await c.waitLeader();
    stores = ['s1', 's2', 's3'].map((s) => new FakeStore(s, c.addresses).start());
    await c.waitStores(3);
    await c.client.allocateWrite({ blobId: 'warmup', size: 1n });
  });

  afterAll(async () => {
    await Promise.all(stores?.map((s) => s.stop()) ?? []);
    await c?.stop();
  });

  async function locateAll(i: number, load: WriteLoad): Promise<string[]> {
    const ids = [...load.acked.keys()];
    const res = await c.stub(i).locate({ blobIds: ids, minIndex: load.maxIndex() }, { timeoutMs: 10_000 });
    return res.locations.filter((l) => !l.found).map((l) => l.blobId);
  }

  it('read-your-writes on every follower with the returned commit index', async () => {
    for (let k = 0; k < 20; k++) {
      const a = await c.client.allocateWrite({ blobId: `ryw-${k}`, size: 3n });
      const r = await c.client.commitWrite({
        blobId: `ryw-${k}`,
        cookie: a.cookie,
        size: 3n,
        sha256: new Uint8Array(32),
        replicas: a.stores.map((s) => ({ storeId: s.storeId, volumeId: 1 })),
      });
      // Immediately, on an instance chosen round-robin: a follower waits for the index.
      const loc = await c.stub(k % 3).locate({ blobIds: [`ryw-${k}`], minIndex: r.commitIndex });
      expect(loc.locations[0]?.found).toBe(true);
      expect(loc.appliedIndex).toBeGreaterThanOrEqual(r.commitIndex);
    }
  });

  it('a killed follower misses writes, restarts, and catches up by snapshot transfer', async () => {
    const leader = await c.waitLeader();
    const follower = (leader + 1) % 3;
    await c.kill(follower);
    const load = new WriteLoad(c.addresses, 'lag').start(3);
    await sleep(1500);
    await load.stop();
    expect(load.acked.size, `failures: ${load.failures.at(-1)?.message}`).toBeGreaterThan(5);
    // Let the leader snapshot past everything the follower had.
    await sleep(800);
    const proc = await c.startOne(follower);
    await expect.poll(() => locateAll(follower, load), { timeout: 10_000 }).toEqual([]);
    expect(proc.logs()).toContain('installing a snapshot from the leader');
    const st = await c.stub(follower).getClusterStatus({ localOnly: true });
    expect(st.directories[0]?.appliedIndex).toBeGreaterThanOrEqual(load.maxIndex());
  });

  it('a killed follower that is only briefly behind catches up from the stream, writes never stop', async () => {
    const leader = await c.waitLeader();
    const follower = (leader + 2) % 3;
    const load = new WriteLoad(c.addresses, 'brief').start(2);
    await sleep(300);
    await c.kill(follower);
    const downAt = Date.now();
    await sleep(1000);
    const upAt = Date.now();
    await c.startOne(follower);
    await sleep(700);
    await load.stop();
    // A majority (leader + the other follower) keeps committing while it is down.
    const whileDown = load.successes.filter((t) => t > downAt && t < upAt).length;
    expect(whileDown, `failures: ${load.failures.map((f) => f.message).join('; ')}`).toBeGreaterThan(0);
    await expect.poll(() => locateAll(follower, load), { timeout: 10_000 }).toEqual([]);
  });

  it('all three killed with -9 and restarted: every acknowledged write is still there', async () => {
    const load = new WriteLoad(c.addresses, 'all').start(2);
    await sleep(800);
    await load.stop();
    await Promise.all([0, 1, 2].map((i) => c.kill(i)));
    await Promise.all([0, 1, 2].map((i) => c.startOne(i)));
    await c.waitLeader();
    for (let i = 0; i < 3; i++) {
      await expect.poll(() => locateAll(i, load), { timeout: 10_000 }).toEqual([]);
    }
  });
});
