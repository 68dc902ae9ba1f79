import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FaultCluster } from '../faults/harness.js';
import {
  corruptAndRepair,
  FULL_DISK_CLUSTER,
  FULL_DISK_WRITES,
  fillDisk,
  runAndVerify,
} from '../faults/run.js';

/**
 * The reduced fault suite (the full one: `npm run test:faults`, docs/faults.md).
 * Under a mixed read/write/delete load through Envoy, kill -9 in turn a store,
 * the leader directory, a follower, the active replication manager, Redis and
 * Envoy, restarting each; then an independent checker (the log of acknowledged
 * operations) verifies through the SDK and directly against every replica, and the
 * history checker (test/faults/history.ts) checks every call the load, a prober of
 * deleted blobs and the full check made for linearizability.
 */
describe('faults (reduced): kill -9 each component under a mixed load', () => {
  let fc: FaultCluster;

  beforeAll(async () => {
    fc = await FaultCluster.start({ stores: 4 });
  });
  afterAll(async () => {
    await fc?.stop();
  });

  it('loses no acknowledged write or delete, and every blob is back at its target replica count', async () => {
    const { res, v, counts, history } = await runAndVerify(fc, 'faults-reduced', {
      faults: ['store', 'leader', 'follower', 'replication', 'redis', 'envoy'],
      load: { writers: 2, readers: 2, deleters: 1, seed: 7, maxOps: 20_000 },
      steadyMs: 1000,
      outageMs: 1500,
      settleMs: 500,
      log: (l) => process.stderr.write(`[faults] ${l}\n`),
      replicatedWithinMs: 90_000,
    });
    expect(res.wrongReads).toEqual([]);
    expect(res.reports.map((r) => [r.fault, r.violations])).toEqual(res.reports.map((r) => [r.fault, []]));
    expect(v.violations).toEqual([]);
    expect(v.corruptNeedles).toEqual([]);
    // The load did real work across the faults.
    expect(counts.writesAcked).toBeGreaterThan(20);
    expect(counts.deletesAcked).toBeGreaterThan(3);
    expect(res.reports.every((r) => Number.isFinite(r.firstWriteMs))).toBe(true);
    // Linearizable across the faults (history.ts; each anomaly printed above by
    // runAndVerify), and the recorded history is not empty.
    expect(history.anomalies).toEqual([]);
    expect(history.ops).toBeGreaterThan(200);
  }, 300_000);

  it('flipped bytes in volume files are detected, served from the healthy replica, and repaired', async () => {
    const r = await corruptAndRepair(fc, { damage: 1, repairWithinMs: 60_000, seed: 0xc0ffee });
    process.stderr.write(`[faults] corruption: ${JSON.stringify(r)}\n`);
    expect(r.detected.every((d) => d.endsWith('DataLoss'))).toBe(true);
    expect(r.servedCorrectly).toBe(r.reads);
  }, 120_000);
});

describe('faults (reduced): a full disk', () => {
  let fc: FaultCluster;

  beforeAll(async () => {
    fc = await FaultCluster.start(FULL_DISK_CLUSTER);
  });
  afterAll(async () => {
    await fc?.stop();
  });

  it('refuses writes with RESOURCE_EXHAUSTED without corrupting anything, and resumes after deletes', async () => {
    const r = await fillDisk(fc, {
      ...FULL_DISK_WRITES,
      probes: 1,
      // Space returns the way an operator frees it: deletes, then compaction.
      log: (l) => process.stderr.write(`[faults] full disk: ${l}\n`),
    });
    process.stderr.write(
      `[faults] full disk: ${JSON.stringify({ ...r, violations: r.violations.length })}\n`,
    );
    // Every refusal is RESOURCE_EXHAUSTED: from the store while the directory still
    // thinks it writable, from the directory once heartbeats say the stores are full.
    expect(r.refusals).toEqual(['RESOURCE_EXHAUSTED', 'RESOURCE_EXHAUSTED']);
    expect(r.readsOk).toBe(r.written);
    expect(r.violations).toEqual([]);
    expect(r.corruptNeedles).toEqual([]);
    expect(r.writtenAfter).toBe(6);
  }, 240_000);
});
