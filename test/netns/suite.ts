import { afterAll, beforeAll, expect } from 'vitest';
import { NetnsCluster } from './cluster.js';
import type { PartitionRun } from './partitions.js';

export const log = (l: string) => process.stderr.write(`[netns] ${l}\n`);

/**
 * Starts the namespace cluster for a describe block (beforeAll) and removes it with
 * every namespace (afterAll, also after a failure); returns a getter. Directories
 * log at debug: their "committed" lines are what the stale-leader audit reads.
 */
export function useNetnsCluster(): () => NetnsCluster {
  let nc: NetnsCluster | undefined;
  // Known before it has booted: a boot that outlasts the hook is still torn down.
  let starting: NetnsCluster | undefined;
  beforeAll(async () => {
    nc = await NetnsCluster.start({ stores: 4, managers: 2, directoryEnv: { LOG_LEVEL: 'debug' } }, (c) => {
      starting = c;
    });
    log(`process logs in ${nc.dataDir}/*.log; addresses 10.77.${nc.net.slot}.0/24`);
  }, 600_000);
  afterAll(async () => {
    await (nc ?? starting)?.stop();
  }, 120_000);
  return () => {
    if (!nc) throw new Error('the netns cluster did not start');
    return nc;
  };
}

/**
 * What every partition run must show: nothing lost or corrupt, linearizable, every audit
 * clean; `audits`: how many faults audit themselves (stale leader, clock skew, slow disk).
 */
export function expectClean(r: PartitionRun, o: { audits: number; writesAcked: number }): void {
  expect(r.wrongReads).toEqual([]);
  expect(r.reports.map((x) => [x.fault, x.violations])).toEqual(r.reports.map((x) => [x.fault, []]));
  expect(r.violations).toEqual([]);
  expect(r.corruptNeedles).toEqual([]);
  expect(r.history.anomalies).toEqual([]);
  // N4 (docs/faults.md): a peer cut off is UNAVAILABLE (the SDK retries it), never INTERNAL.
  const internal = r.reports.flatMap((x) =>
    Object.entries(x.errors)
      .filter(([k]) => k.endsWith(' INTERNAL') || k.endsWith(' UNKNOWN'))
      .map(([k, n]) => `${x.fault}: ${n} × ${k}`),
  );
  expect(internal).toEqual([]);
  // The stale leader: one leader per term, no commit by the deposed one, stores' terms only rising.
  // Clock skew: the skewed directory led and committed past a lease. Slow disk: writes
  // slower during than before, none failed.
  expect(r.audits.length).toBe(o.audits);
  expect(r.audits.flatMap((a) => a.problems)).toEqual([]);
  expect(r.oplog.counts().writesAcked).toBeGreaterThan(o.writesAcked);
  // The slow reader, when it ran: reads raced deletes to the end, and none brought a blob back.
  if (r.slowReads) {
    expect(r.slowReads.resurrected).toEqual([]);
    expect(r.slowReads.completed).toBeGreaterThan(0);
  }
}
