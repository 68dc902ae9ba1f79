import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/replication-cluster.js';

/**
 * A new cluster's placement groups wait for PLACEMENT_EXPECTED_STORES (real
 * directory, Redis and stores): with 3 of 4 expected stores up the directory
 * creates no group, and the 4th, registering late, gets memberships like the
 * others (it used to get none until an operator balanced: docs/faults.md).
 */
const GROUPS = 16;
let cluster: Cluster;

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 1,
    stores: 3,
    gateways: 0,
    replication: false,
    envoy: false,
    directoryEnv: {
      PLACEMENT_GROUPS: String(GROUPS),
      PLACEMENT_EXPECTED_STORES: '4',
      PLACEMENT_EXPECTED_WAIT: '600s',
      // The wait is logged at info.
      LOG_LEVEL: 'info',
    },
  });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
});

describe('the first placement with PLACEMENT_EXPECTED_STORES', () => {
  it('waits for a late 4th store, which then holds memberships like the others', async () => {
    const dir = cluster.directories[0]!;
    // The leader has seen the 3 stores settle and decided to wait for the 4th.
    await waitFor(
      () => (dir.logs().includes('placement groups wait for PLACEMENT_EXPECTED_STORES') ? true : undefined),
      60_000,
      'the directory waiting for the expected stores',
      () => dir.logs().slice(-3000),
    );
    expect((await cluster.status()).placementGroups).toHaveLength(0);

    await cluster.addStore();
    const s = await waitFor(
      async () => {
        const st = await cluster.status();
        return st.placementGroups.length === GROUPS ? st : undefined;
      },
      60_000,
      'placement groups',
      () => dir.logs().slice(-3000),
    );
    const loads = new Map(s.storeLoads.map((l) => [l.storeId, l.memberships]));
    expect([...loads.keys()].sort()).toEqual(['store-0', 'store-1', 'store-2', 'store-3']);
    // 16 groups × 3 members over 4 stores.
    for (const [id, n] of loads) expect(n, id).toBe(12);
  }, 180_000);
});
