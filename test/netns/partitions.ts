import { fullCheck, quickCheck, type Violation, waitReplicated } from '../faults/check.js';
import type { HistoryOp } from '../faults/history.js';
import {
  attributeAnomalies,
  checkRecorded,
  type HistorySummary,
  RecordingClient,
  startProber,
} from '../faults/history-recorder.js';
import { MixedLoad, type MixedLoadOptions, type OpSample } from '../faults/load.js';
import { locateAll } from '../faults/locate.js';
import { OpLog } from '../faults/oplog.js';
import { type FaultReport, faultTable, saveReport, windowStats } from '../faults/run.js';
import { describeSlowReads, type SlowReaderStats, startSlowReader } from '../faults/slow-reader.js';
import { type NetnsCluster, PORTS, skewedClockEnv, sleep } from './cluster.js';
import { slowStore } from './slow-link.js';
import { readLog, staleLeader } from './stale-leader.js';

/** What a fault's audit sees of its own window, after the run (the windows final). */
export interface FaultWindow {
  report: FaultReport;
  /** Every call the load and the prober made (RecordingClient.history). */
  history: HistoryOp[];
  /** Every call of the load, failures with their error (MixedLoad.samples). */
  samples: readonly OpSample[];
  /** The steady load before the fault began, apply returned (the window's start), healing began (ms). */
  steadyFrom: number;
  appliedAt: number;
  healAt: number;
  /** When apply started (the steady load's end). */
  applyFrom: number;
}

/** A fault's own audit: problems (must be none), detail for the report, a note for the table's "killed" column. */
export interface FaultAudit {
  problems: string[];
  detail: unknown;
  note?: string;
}

/** A network fault: cuts links (net.ts), says what it cut; healing removes every cut. */
export interface Partition {
  name: string;
  apply(nc: NetnsCluster): Promise<string>;
  /** Undoes the fault (default: remove every cut). */
  heal?(nc: NetnsCluster): Promise<void>;
  /** After the run: what this fault's own audit found wrong (default: nothing to audit). */
  audit?(nc: NetnsCluster, w: FaultWindow): Promise<FaultAudit>;
  /** Held at least this long (ms) whatever the run's outageMs; the steady load before it, too (minSteadyMs). */
  minOutageMs?: number;
  minSteadyMs?: number;
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
  'clock-skew': clockSkew('+30s'),
  // The second round's signs are the opposite: a directory behind, a store ahead.
  'clock-skew-reversed': clockSkew('-30s'),
  'slow-disk': () => ({
    name: 'slow disk: every fdatasync of one store 200 ms late (FAULT_FSYNC_DELAY)',
    // Enough writes either side for the medians: on two loaded cores a write takes ~1 s.
    minSteadyMs: 20_000,
    minOutageMs: 20_000,
    async apply(nc) {
      await nc.restartWith('store1', { FAULT_FSYNC_DELAY: `${FSYNC_DELAY_MS}ms` });
      return 'store1 fsync +200 ms';
    },
    async heal(nc) {
      await nc.restartWith('store1');
    },
    // A slow disk slows writes and fails none. Before → during is what the table shows,
    // but on two cores loaded by other runs the medians of two 20 s windows moved by
    // 400 ms with FAULT_FSYNC_DELAY=0 too. So the fault is judged within its own window: writes with a replica on store1 against those without, under the same
    // load. Each group commit has two fdatasyncs and a write waits for every replica, so
    // those on store1 should be about 2 × the delay slower; at least one delay is required
    // (a comparison, not a bound).
    async audit(nc, w) {
      const writes = (from: number, to: number) =>
        w.history.filter(
          (o) => o.input.op === 'write' && o.output.result === 'ok' && o.start >= from && o.end < to,
        );
      const during = writes(w.appliedAt, w.healAt);
      const where = await locateAll(
        nc.directory,
        during.map((o) => o.key),
      );
      const onStore1 = (o: HistoryOp) =>
        where.get(o.key)?.replicas.some((r) => r.storeId === 'store-1') ?? false;
      const m = {
        before: p50(writes(w.steadyFrom, w.applyFrom)),
        during: p50(during),
        onStore1: p50(during.filter(onStore1)),
        elsewhere: p50(during.filter((o) => !onStore1(o) && where.get(o.key)?.replicas.length)),
      };
      const problems: string[] = [];
      // Judged while the disk was slow: calls begun after the restart that applied it and
      // ended before the restart that heals it. Both restarts are kill -9 (the kill suite's
      // fault): a call in flight to store1 then can fail, and the table counts it.
      const failed = w.samples.filter(
        (s) => !s.ok && s.kind !== 'read' && s.start >= w.appliedAt && s.end < w.healAt,
      );
      if (failed.length > 0)
        problems.push(
          `slow disk: ${failed.length} writes/deletes failed while it was slow (${[...new Set(failed.map((s) => s.error))].join('; ')})`,
        );
      const restarts = Math.max(0, w.report.failed.write + w.report.failed.delete - failed.length);
      // Before → during is shown, not required: other runs' load moves it either way.
      for (const k of ['onStore1', 'elsewhere'] as const)
        if (m[k].n < 5) problems.push(`slow disk: only ${m[k].n} acknowledged writes (${k}) to compare`);
      if (!(m.onStore1.ms - m.elsewhere.ms >= FSYNC_DELAY_MS))
        problems.push(
          `slow disk not in effect: during it, write p50 ${m.onStore1.ms} ms with a replica on store1, ${m.elsewhere.ms} ms without (not ${FSYNC_DELAY_MS} ms more)`,
        );
      return {
        problems,
        detail: m,
        note:
          `write p50 ${m.before.ms} → ${m.during.ms} ms; during: ${m.onStore1.ms} ms on store1, ${m.elsewhere.ms} ms elsewhere (${m.onStore1.n}, ${m.elsewhere.n} writes)` +
          (restarts > 0 ? `; ${restarts} failed around the restarts` : ''),
      };
    },
  }),
};

/** The slow disk's FAULT_FSYNC_DELAY (ms). */
const FSYNC_DELAY_MS = 200;

/** Median latency (ms) of `ops`, and how many. */
function p50(ops: HistoryOp[]): { ms: number; n: number } {
  const d = ops.map((o) => o.end - o.start).sort((x, y) => x - y);
  return { ms: d.length ? (d[Math.floor(d.length / 2)] as number) : Number.NaN, n: d.length };
}

const READY = 'leader ready: serving writes';
/** The netns cluster's LEADER_TIMEOUT (cluster.ts): the lease the skewed leader must outlast. */
const LEASE_MS = 4000;
/**
 * How long the clock skew is held: past the longest wall-clock period the netns cluster
 * runs with (the managers' EXTRA_REMOVAL_GRACE, 30 s; the lease 4 s, GC_INTERVAL 1 s with
 * GC_GRACE_PERIOD 2 s, SCRUB_INTERVAL 2 s), plus margin. ANTI_ENTROPY_INTERVAL (10 min)
 * is not waited for: a full round is run on demand inside the skew.
 */
const SKEW_HOLD_MS = 40_000;

/**
 * Clock skew: the leader directory restarted with its wall clock `dirOffset` away and
 * store2 the opposite way (libfaketime), then the skewed directory made leader again
 * (its peers cut from Redis until it holds the lease: restarting it deposed it), held
 * SKEW_HOLD_MS with a full anti-entropy round inside, then both restarted on the true clock.
 * The audit: the skewed directory took office and committed in its term for longer
 * than a lease while skewed.
 */
function clockSkew(dirOffset: '+30s' | '-30s'): () => Partition {
  const storeOffset = dirOffset === '+30s' ? '-30s' : '+30s';
  const ms = (o: string) => (o.startsWith('-') ? -30_000 : 30_000);
  const pretty = (o: string) => o.replace('-', '−').replace('s', ' s');
  return () => {
    let di = -1;
    let dir = '';
    let logFrom = 0;
    const store = 'store2';
    let led: { term: number; afterMs: number } | undefined;
    let seen: { commits: number; spanMs: number; stillLeading: boolean; auditMs: number } | undefined;
    return {
      name: `clock skew: a directory's wall clock ${pretty(dirOffset)}, a store's ${pretty(storeOffset)} (libfaketime), the skewed directory made leader`,
      minOutageMs: SKEW_HOLD_MS,
      async apply(nc) {
        di = await nc.leaderIndex(120_000);
        dir = dirName(nc, di);
        logFrom = (await readLog(nc, dir)).length;
        await nc.restartWith(dir, skewedClockEnv(dirOffset));
        await nc.restartWith(store, skewedClockEnv(storeOffset));
        const offsets = [
          await clockOffset(nc, dir, ms(dirOffset)),
          await clockOffset(nc, store, ms(storeOffset)),
        ];
        led = await makeLeader(nc, di, logFrom);
        return `${dir} ${pretty(dirOffset)}, ${store} ${pretty(storeOffset)} (their log stamps: ${offsets.map((x) => `${Math.round(x / 1000)} s`).join(', ')}); ${dir} leads term ${led.term} after ${led.afterMs} ms`;
      },
      // A full anti-entropy round under the skew (its stamp comparisons see the skewed
      // stamps), then back on the true clock: the store reloads its volumes (stamp-ordered merge).
      async heal(nc) {
        const t0 = Date.now();
        await nc.audit();
        const auditMs = Date.now() - t0;
        const lines = (await readLog(nc, dir)).slice(logFrom);
        const term = led?.term ?? -1;
        const ready = lines.find((l) => l.msg === READY && Number(l.term) === term);
        const commits = lines.filter((l) => l.msg === 'committed' && Number(l.term) === term);
        // Both stamps from the skewed process: the offset cancels.
        const spanMs = ready && commits.length ? (commits.at(-1)?.time ?? 0) - ready.time : 0;
        const s = await nc.statusOf(di, 2000).catch(() => undefined);
        seen = { commits: commits.length, spanMs, stillLeading: s?.leaderId === `directory-${di}`, auditMs };
        await nc.restartWith(dir);
        await nc.restartWith(store);
      },
      async audit() {
        if (!led || !seen) throw new Error('the clock-skew fault did not run');
        const problems: string[] = [];
        if (seen.commits === 0) problems.push(`${dir} committed nothing in term ${led.term} under skew`);
        else if (seen.spanMs <= LEASE_MS)
          problems.push(
            `${dir} committed in term ${led.term} for ${seen.spanMs} ms under skew, not past a ${LEASE_MS} ms lease`,
          );
        return {
          problems,
          detail: { dir, store, dirOffset, storeOffset, ...led, ...seen },
          note: `${dir} committed ${seen.commits}× in term ${led.term} over ${(seen.spanMs / 1000).toFixed(1)} s skewed${seen.stillLeading ? '' : ' (deposed before healing)'}`,
        };
      },
    };
  };
}

/**
 * Makes directory `di` (just restarted: a follower) the leader: its peers are cut from
 * Redis, so only it can take the lease once the current one runs out, until it logs
 * "leader ready" (after `logFrom`) and reports itself leader; then the cuts are healed
 * (it keeps the lease by renewing). 120 s at most.
 */
async function makeLeader(
  nc: NetnsCluster,
  di: number,
  logFrom: number,
): Promise<{ term: number; afterMs: number }> {
  const dir = dirName(nc, di);
  const t0 = Date.now();
  for (const d of nc.names.directories) if (d !== dir) await nc.net.cut(d, 'redis');
  try {
    while (Date.now() - t0 < 120_000) {
      const ready = (await readLog(nc, dir)).slice(logFrom).findLast((l) => l.msg === READY);
      // 5 s: a status call at load ~40 can take more than a second.
      const s = ready ? await nc.statusOf(di, 5000).catch(() => undefined) : undefined;
      if (ready && s?.leaderId === `directory-${di}`)
        return { term: Number(ready.term), afterMs: Date.now() - t0 };
      await sleep(200);
    }
  } finally {
    await nc.net.heal();
  }
  throw new Error(
    `${dir} did not take office within 120 s with its peers cut from Redis; logs in ${nc.dataDir}`,
  );
}

export interface PartitionRunOptions {
  partitions: string[];
  load: Omit<MixedLoadOptions, 'maxMs'>;
  /** Load before each cut, time cut, load after healing (ms). */
  steadyMs: number;
  outageMs: number;
  settleMs: number;
  replicatedWithinMs: number;
  /** Run the slow reader (test/faults/slow-reader.ts) beside the load: reads racing deletes through the cache. */
  slowReader?: boolean;
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
  /** The slow reader's figures, when it ran. */
  slowReads?: SlowReaderStats;
  /** What each fault's own audit found (the stale leader's detail: StaleLeaderResult). */
  audits: FaultAudit[];
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
  const slow = o.slowReader
    ? startSlowReader(
        sdk,
        oplog,
        {
          gateways: () => nc.names.gateways.map((g) => nc.addr(g, PORTS.gateway)),
          security: nc.security,
          cacheRedisUrl: nc.redisUrl,
        },
        () => stopProbe,
        { log: o.log },
      )
    : undefined;
  let slowReads: SlowReaderStats | undefined;
  const reports: FaultReport[] = [];
  const windows: number[] = [];
  const times: Omit<FaultWindow, 'report' | 'history' | 'samples'>[] = [];
  const applied: Partition[] = [];
  const seen = new Set<string>();
  try {
    for (const key of o.partitions) {
      const make = PARTITIONS[key];
      if (!make) throw new Error(`unknown partition ${key}`);
      const p = make();
      applied.push(p);
      const steadyFrom = Date.now();
      await sleep(Math.max(o.steadyMs, p.minSteadyMs ?? 0));
      const applyFrom = Date.now();
      const cut = await p.apply(nc);
      const at = Date.now();
      windows.push(at);
      o.log(`partition: ${cut}`);
      await sleep(Math.max(o.outageMs, p.minOutageMs ?? 0));
      const healAt = Date.now();
      times.push({ steadyFrom, applyFrom, appliedAt: at, healAt });
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
        anomalies: 0,
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
    slowReads = await slow?.done;
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
    // A whole volume hashed: over a minute at load 35 (a 60 s bound failed the full
    // suite's final check after every fault had passed); the kill suite's scrubAll allows 600 s.
    const res = await nc.storeClient(i).scrub({ volumeId: 0 }, { timeoutMs: 600_000 });
    for (const c of res.corrupt) corruptNeedles.push(`store-${i}: ${c.blobId} (${c.reason ?? ''})`);
  }
  const audits: FaultAudit[] = [];
  for (const [i, p] of applied.entries()) {
    const report = reports[i];
    const t = times[i];
    if (!p.audit || !report || !t) continue;
    const a = await p.audit(nc, { report, history: sdk.history, samples: load.samples, ...t });
    if (a.note) report.killed += `; ${a.note}`;
    audits.push(a);
  }
  const h = checkRecorded(sdk);
  const anomalies = h.anomalies;
  const early = attributeAnomalies(reports, windows, h.anomalyStarts);
  const run: PartitionRun = {
    reports,
    oplog,
    wrongReads: load.wrongReads,
    violations,
    corruptNeedles,
    replicatedMs: rep.ms,
    history: h,
    audits,
    ...(slowReads ? { slowReads } : {}),
  };
  o.log(
    `\n${faultTable(reports)}\n\nacknowledged: ${JSON.stringify(oplog.counts())}; replicas at target after ${rep.ms} ms; ` +
      `history: ${h.ops} ops on ${h.keys} blobs, ${anomalies.length} not linearizable (${early} before the first fault)` +
      (slowReads ? `; ${describeSlowReads(slowReads)}` : ''),
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
