import { describe, expect, it } from 'vitest';
import { runPartitions } from './partitions.js';
import { expectClean, log, useNetnsCluster } from './suite.js';

/**
 * The reduced network-fault suite (in `npm test`; the full one is
 * test/netns/partitions.faults.ts in `npm run test:faults`): every component in its
 * own network namespace (test/netns/net.ts), partitions by blackhole routes, under
 * the mixed load, checked by the op-log checker and the linearizability checker.
 */
describe('network partitions between namespaces (reduced)', () => {
  const nc = useNetnsCluster();

  it('leader cut from its peers, from Redis, a gateway from a store, a stale leader: 0 lost, linearizable', async () => {
    const r = await runPartitions(nc(), 'netns-partitions', {
      partitions: ['leader-peers', 'leader-redis', 'gateway-store', 'stale-leader'],
      load: { writers: 2, readers: 2, deleters: 1, seed: 21, maxOps: 100_000 },
      steadyMs: 1500,
      outageMs: 6000,
      settleMs: 500,
      replicatedWithinMs: 90_000,
      log,
    });
    expectClean(r, { audits: 1, writesAcked: 20 });
    expect(r.history.ops).toBeGreaterThan(100);
  }, 600_000);
});
