import { Code, ConnectError } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { DirectoryCluster } from '../helpers/directory-cluster.js';
import { freePort } from '../helpers/redis.js';
import { type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

/** Real `haystack store` processes heartbeating to real directories. */
describe('directory with real store processes', () => {
  let c: DirectoryCluster;
  const stores: (ServerProcess | null)[] = [];

  async function startStore(i: number): Promise<ServerProcess> {
    const port = await freePort();
    const p = await spawnServer({
      name: `store-${i}`,
      args: ['store', '--listen', `127.0.0.1:${port}`, '--data', tmpName(`dstore${i}`)],
      env: {
        STORE_ID: `store-${i}`,
        ZONE: `zone-${i}`,
        DIRECTORY_ADDRS: c.addresses.join(','),
        HEARTBEAT_INTERVAL: '200ms',
        LOG_LEVEL: 'warn',
      },
    });
    stores[i] = p;
    return p;
  }

  async function health(): Promise<Record<string, StoreHealth>> {
    const st = await c.client.getClusterStatus();
    return Object.fromEntries(st.stores.map((s) => [s.storeId, s.health]));
  }

  beforeAll(async () => {
    c = await DirectoryCluster.start();
    await c.waitLeader();
    await Promise.all([0, 1, 2].map((i) => startStore(i)));
  });

  afterAll(async () => {
    await Promise.all(stores.map((s) => s?.kill()));
    await c?.stop();
  });

  it('registers every store HEALTHY with its address and zone', async () => {
    // A wait, not a bound: at load average 30+ a store's first heartbeat came after 10 s.
    await expect.poll(health, { timeout: 60_000 }).toEqual({
      'store-0': StoreHealth.HEALTHY,
      'store-1': StoreHealth.HEALTHY,
      'store-2': StoreHealth.HEALTHY,
    });
    const st = await c.client.getClusterStatus();
    for (const s of st.stores) {
      expect(s.address).toBe(stores[Number(s.storeId.slice(-1))]?.address);
      expect(s.zone).toBe(`zone-${s.storeId.slice(-1)}`);
      expect(s.capacityBytes).toBeGreaterThan(0n);
    }
  });

  it('keeps the stores through a directory leader kill -9 (they follow the new leader)', async () => {
    const leader = await c.waitLeader();
    await c.kill(leader);
    await c.waitLeader(10_000, leader);
    const a = await c.client.allocateWrite({ blobId: 'after-failover', size: 10n });
    expect(a.stores).toHaveLength(3);
    await c.startOne(leader);
    await expect.poll(health, { timeout: 60_000 }).toEqual({
      'store-0': StoreHealth.HEALTHY,
      'store-1': StoreHealth.HEALTHY,
      'store-2': StoreHealth.HEALTHY,
    });
  });

  it('a store killed with -9 is DOWN and gets no new blobs', async () => {
    await stores[2]?.kill();
    stores[2] = null;
    // No time bound: with STORE_DOWN_AFTER 1.2 s here a bound could not tell a cut stream
    // from an aged heartbeat, and at load average 30+ even 2.5 s was missed.
    await expect
      .poll(async () => (await health())['store-2'], { timeout: 30_000, interval: 20 })
      .toBe(StoreHealth.DOWN);
    const err = ConnectError.from(
      await c.client.allocateWrite({ blobId: 'three', size: 10n }, { deadlineMs: 5_000 }).catch((e) => e),
    );
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toContain('store-2 is DOWN');
    const two = await c.client.allocateWrite({ blobId: 'two', size: 10n, replicaCount: 2 });
    expect(two.stores.map((s) => s.storeId).sort()).toEqual(['store-0', 'store-1']);
  });
});
