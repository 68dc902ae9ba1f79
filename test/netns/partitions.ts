import { fullCheck, quickCheck, type Violation, waitReplicated } from '../faults/check.js';
import {
  checkRecorded,
  type HistorySummary,
  RecordingClient,
  startProber,
} from '../faults/history-recorder.js';
import { MixedLoad, type MixedLoadOptions } from '../faults/load.js';
import { OpLog } from '../faults/oplog.js';
import { type FaultReport, faultTable, saveReport, windowStats } from '../faults/run.js';
import { type NetnsCluster, skewedClockEnv, sleep } from './cluster.js';
import { slowStore } from './slow-link.js';
import { readLog, staleLeader } from './stale-leader.js';

/** A network fault: cuts links (net.ts), says what it cut; healing removes every cut. */
export interface Partition {
  name: string;
  apply(nc: NetnsCluster): Promise<string>;
  /** Undoes the fault (default: remove every cut). */
  heal?(nc: NetnsCluster): Promise<void>;
  /** After the run: what this fault's own audit found wrong (default: nothing to audit). */
  audit?(nc: NetnsCluster): Promise<{ problems: string[]; detail: unknown }>;
}

const dirName = (nc: NetnsCluster, i: number) => nc.names.directories[i] as string;

/**
 * Waits until a directory other than `old` reports itself the leader: the majority
 * side of a cut elects one. 120 s at most: elections are slow on a starved machine.
 * Returns who and after how long.
 */
async function peerTakesOffice(nc: NetnsCluster, old: number): Promise<string> {
  const t0 = Date.now();
  let last = '';
  while (Date.now() - t0 < 120_000) {
    for (let i = 0; i < nc.names.directories.length; i++) {
      if (i === old) continue;
      const s = await nc.statusOf(i, 1000).catch(() => undefined);
      if (s?.leaderId === `directory-${i}`) return `directory-${i} leads after ${Date.now() - t0} ms`;
      if (s) last = `directory-${i} sees leader "${s.leaderId}"`;
    }
    await sleep(200);
  }
  throw new Error(
    `no directory of the majority side took office within 120 s (${last}); logs in ${nc.dataDir}`,
  );
}

/** The partitions of issue 14, by name. The leader is looked up when the fault starts. */
export const PARTITIONS: Record<string, () => Partition> = {
  'leader-peers': () => ({
    name: 'leader directory cut from its peers (not from Redis)',
    async apply(nc) {
      const l = await nc.leaderIndex(120_000);
      const peers = nc.names.directories.filter((_, i) => i !== l);
      await nc.net.split([dirName(nc, l)], peers);
      // The peers are a majority: one of them must take office while the cut lasts (CheckQuorum).
      const next = await peerTakesOffice(nc, l);
      return `${dirName(nc, l)} ✂ ${peers.join(', ')}; ${next}`;
    },
  }),
  'leader-redis': () => ({
    name: 'leader directory cut from Redis (not from its peers)',
    async apply(nc) {
      const l = await nc.leaderIndex(120_000);
      await nc.net.cut(dirName(nc, l), 'redis');
      return `${dirName(nc, l)} ✂ redis`;
    },
  }),
  'gateway-store': () => ({
    name: 'a gateway cut from one store',
    async apply(nc) {
      await nc.net.cut('gw0', 'store1');
      return 'gw0 ✂ store1';
    },
  }),
  'slow-store': slowStore,
  'majority-minority': () => ({
    name: 'majority/minority split (the leader directory, a store and a gateway on the minority side)',
    async apply(nc) {
      const l = await nc.leaderIndex(120_000);
      const minority = [dirName(nc, l), 'store0', 'gw0'];
      const majority = [
        'redis',
        ...nc.names.directories.filter((_, i) => i !== l),
        ...nc.names.stores.filter((s) => s !== 'store0'),
        ...nc.names.managers,
        'gw1',
      ];
      await nc.net.split(minority, majority);
      return `{${minority.join(', ')}} ✂ {${majority.join(', ')}}`;
    },
  }),
  'stale-leader': staleLeader,
  'clock-skew': () => {
    let dir = '';
    const store = 'store2';
    return {
      name: "clock skew: the leader directory's wall clock +30 s, a store's −30 s (restarted under libfaketime)",
      async apply(nc) {
        dir = dirName(nc, await nc.leaderIndex(120_000));
        await nc.restartWith(dir, skewedClockEnv('+30s'));
        await nc.restartWith(store, skewedClockEnv('-30s'));
        const seen = [await clockOffset(nc, dir, 30_000), await clockOffset(nc, store, -30_000)];
        return `${dir} +30 s, ${store} −30 s (their log stamps: ${seen.map((ms) => `${Math.round(ms / 1000)} s`).join(', ')})`;
      },
      // Restarted on the true clock: the store reloads its volumes (stamp-ordered merge).
      async heal(nc) {
        await nc.restartWith(dir);
        await nc.restartWith(store);
      },
    };
  },
  'slow-disk': () => ({
    name: 'slow disk: every fdatasync of one store 200 ms late (FAULT_FSYNC_DELAY)',
    async apply(nc) {
      await nc.restartWith('store1', { FAULT_FSYNC_DELAY: '200ms' });
      return 'store1 fsync +200 ms';
    },
    async heal(nc) {
      await nc.restartWith('store1');
    },
  }),
};

export interface PartitionRunOptions {
  partitions: string[];
  load: Omit<MixedLoadOptions, 'maxMs'>;
  /** Load before each cut, time cut, load after healing (ms). */
  steadyMs: number;
  outageMs: number;
  settleMs: number;
  replicatedWithinMs: number;
  log: (line: string) => void;
}

/**
 * How far `name`'s wall clock is from ours, from the stamp of its latest log line (pino's
 * `time`, ms); throws unless within 10 s of `expectMs`, so a libfaketime that loaded but
 * did nothing cannot pass the clock-skew fault as if skewed. Polls up to 30 s for a line
 * written after the restart.
 */
async function clockOffset(nc: NetnsCluster, name: string, expectMs: number): Promise<number> {
  let seen = Number.NaN;
  for (const end = Date.now() + 30_000; Date.now() < end; await sleep(1000)) {
    const last = (await readLog(nc, name)).at(-1);
    seen = last ? last.time - Date.now() : Number.NaN;
    if (Math.abs(seen - expectMs) < 10_000) return seen;
  }
  throw new Error(`${name}: clock skew not in effect (log stamps ${seen} ms off, expected ${expectMs})`);
}

export interface PartitionRun {
  reports: FaultReport[];
  oplog: OpLog;
  wrongReads: string[];
  violations: Violation[];
  corruptNeedles: string[];
  replicatedMs: number;
  history: HistorySummary;
  /** What each fault's own audit found (the stale leader's detail: StaleLeaderResult). */
  audits: { problems: string[]; detail: unknown }[];
}

/**
 * Under the mixed load (plus a prober reading every blob touched), each partition in
 * turn: cut, hold `outageMs` (past the 4 s lease and the 3 s store DOWN time), heal,
 * wait until all is healthy and a write issued after the cut was acknowledged, check
 * everything acknowledged so far against the stores. Then: every blob back at its
 * target, the op-log checker's full check, a scrub of every store, and the
 * linearizability check of the whole recorded history.
 */
export async function runPartitions(
  nc: NetnsCluster,
  name: string,
  o: PartitionRunOptions,
): Promise<PartitionRun> {
  const oplog = new OpLog();
  const sdk = new RecordingClient({ url: nc.url, retries: 6, retryMaxMs: 1500, timeoutMs: 20_000 });
  const perFaultMs = o.steadyMs + o.outageMs + o.settleMs + 300_000;
  const load = new MixedLoad(sdk, oplog, { ...o.load, maxMs: 60_000 + o.partitions.length * perFaultMs });
  let stopProbe = false;
  const prober = startProber(sdk, oplog, () => stopProbe);
  const reports: FaultReport[] = [];
  const windows: number[] = [];
  const applied: Partition[] = [];
  const seen = new Set<string>();
  try {
    for (const key of o.partitions) {
      const make = PARTITIONS[key];
      if (!make) throw new Error(`unknown partition ${key}`);
      const p = make();
      applied.push(p);
      await sleep(o.steadyMs);
      const cut = await p.apply(nc);
      const at = Date.now();
      windows.push(at);
      o.log(`partition: ${cut}`);
      await sleep(o.outageMs);
      await (p.heal ? p.heal(nc) : nc.net.heal());
      const healedAt = Date.now();
      await nc.waitHealthy(180_000);
      const healthyAt = Date.now();
      const deadline = Date.now() + 90_000;
      while (!load.samples.some((s) => s.kind === 'write' && s.ok && s.start >= at)) {
        if (Date.now() > deadline || !load.running) {
          const last = [...load.samples].reverse().find((s) => s.kind === 'write' && !s.ok)?.error;
          throw new Error(
            `no write issued after "${p.name}" was acknowledged within 90 s of healing (last error ${last ?? 'none'}); logs in ${nc.dataDir}`,
          );
        }
        await sleep(100);
      }
      await sleep(o.settleMs);
      const violations = (await quickCheck(oplog, nc.directory, Date.now())).filter((v) => !seen.has(v.id));
      for (const v of violations) seen.add(v.id);
      reports.push({
        fault: p.name,
        killed: cut,
        ...windowStats(load.samples, at, Number.POSITIVE_INFINITY),
        restartedAtMs: healedAt - at,
        healthyAtMs: healthyAt - at,
        recoveryMs: 0,
        dataLost: violations.length,
        violations,
      });
      o.log(
        `${p.name}: healed after ${healedAt - at} ms, healthy after ${healthyAt - at} ms; ${violations.length} violations`,
      );
      for (const v of violations.slice(0, 3)) o.log(`  violation: ${v.id.slice(0, 16)}… ${v.what}`);
    }
  } finally {
    await nc.net.heal().catch(() => {});
    await load.stop();
    stopProbe = true;
    await prober;
  }
  reports.forEach((r, i) => {
    Object.assign(
      r,
      windowStats(load.samples, windows[i] as number, windows[i + 1] ?? Number.POSITIVE_INFINITY),
    );
    r.recoveryMs = Math.max(r.firstWriteMs, r.lastFailureMs);
  });
  const rep = await waitReplicated(oplog, nc.directory, o.replicatedWithinMs);
  await sleep(2000);
  await nc.audit();
  const violations = await fullCheck(oplog, sdk, nc.directory, nc.storeAddresses());
  const corruptNeedles: string[] = [];
  for (let i = 0; i < nc.names.stores.length; i++) {
    const res = await nc.storeClient(i).scrub({ volumeId: 0 }, { timeoutMs: 60_000 });
    for (const c of res.corrupt) corruptNeedles.push(`store-${i}: ${c.blobId} (${c.reason ?? ''})`);
  }
  const audits: { problems: string[]; detail: unknown }[] = [];
  for (const p of applied) if (p.audit) audits.push(await p.audit(nc));
  const h = checkRecorded(sdk);
  const anomalies = h.anomalies;
  const run: PartitionRun = {
    reports,
    oplog,
    wrongReads: load.wrongReads,
    violations,
    corruptNeedles,
    replicatedMs: rep.ms,
    history: h,
    audits,
  };
  o.log(
    `\n${faultTable(reports)}\n\nacknowledged: ${JSON.stringify(oplog.counts())}; replicas at target after ${rep.ms} ms; ` +
      `history: ${h.ops} ops on ${h.keys} blobs, ${anomalies.length} not linearizable`,
  );
  for (const a of anomalies.slice(0, 5)) o.log(a);
  for (const a of audits) o.log(`audit: ${JSON.stringify(a)}`);
  await saveReport(name, {
    reports,
    counts: oplog.counts(),
    violations,
    corruptNeedles,
    history: run.history,
    audits,
  });
  return run;
}
