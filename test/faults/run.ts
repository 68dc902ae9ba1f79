import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Code, ConnectError } from '@connectrpc/connect';
import { payload } from '../../bench/workload.js';
import { HaystackClient, ResourceExhaustedError } from '../../internal/sdk/index.js';
import { httpsGet } from '../helpers/pki.js';
import { redisClient } from '../helpers/redis.js';
import { readBlob } from '../helpers/store-client.js';
import { fullCheck, quickCheck, type Violation, waitReplicated } from './check.js';
import { FAULTS, type Fault, type FaultCluster, flipBytesOnDisk, sleep } from './harness.js';
import {
  attributeAnomalies,
  checkRecorded,
  type HistorySummary,
  type RecordingClient,
  startProber,
} from './history-recorder.js';
import { MixedLoad, type MixedLoadOptions, type OpSample } from './load.js';
import { locateAll } from './locate.js';
import { OpLog, sha256hex, store } from './oplog.js';
import { describeSlowReads, type SlowReaderStats, startSlowReader } from './slow-reader.js';

export interface FaultReport {
  fault: string;
  killed: string;
  /** Requests (after the SDK's retries) that failed from the kill until the next fault. */
  failed: { write: number; read: number; delete: number };
  ok: { write: number; read: number; delete: number };
  errors: Record<string, number>;
  /** From the kill: restart issued, all healthy again, first write issued after the kill that succeeded. */
  restartedAtMs: number;
  healthyAtMs: number;
  firstWriteMs: number;
  /** From the kill to the end of the last failed request of the window (0: none failed). */
  lastFailureMs: number;
  /** Service back: the later of the first successful write and the last failure. */
  recoveryMs: number;
  /** Acknowledged writes or deletes found violated after this fault (must be 0). */
  dataLost: number;
  violations: Violation[];
  /** Non-linearizable blobs whose first offending operation started in this fault's window (attributeAnomalies). */
  anomalies: number;
}

export interface SequenceOptions {
  faults: string[];
  load: Omit<MixedLoadOptions, 'maxMs'>;
  /** Load before each kill, time dead, load after recovery (ms). */
  steadyMs: number;
  outageMs: number;
  settleMs: number;
  /** Run the slow reader (slow-reader.ts) beside the load: reads racing deletes through the cache. */
  slowReader?: boolean;
  log?: (line: string) => void;
}

export interface SequenceResult {
  reports: FaultReport[];
  oplog: OpLog;
  samples: OpSample[];
  wrongReads: string[];
  /** The load's and the prober's client: its `history` is every call they made. */
  sdk: RecordingClient;
  /** The slow reader's figures, when it ran. */
  slowReads?: SlowReaderStats;
  /** When each fault's window starts (its kill): reports[i] covers windows[i] .. windows[i + 1]. */
  windows: number[];
}

export function windowStats(samples: OpSample[], from: number, to: number) {
  const inW = samples.filter((s) => s.end >= from && s.end < to);
  const count = (kind: OpSample['kind'], ok: boolean) =>
    inW.filter((s) => s.kind === kind && s.ok === ok).length;
  const errors: Record<string, number> = {};
  for (const s of inW) if (!s.ok) errors[`${s.kind} ${s.error}`] = (errors[`${s.kind} ${s.error}`] ?? 0) + 1;
  const failures = inW.filter((s) => !s.ok).map((s) => s.end - from);
  const firstWrite = inW
    .filter((s) => s.kind === 'write' && s.ok && s.start >= from)
    .map((s) => s.end - from);
  return {
    failed: { write: count('write', false), read: count('read', false), delete: count('delete', false) },
    ok: { write: count('write', true), read: count('read', true), delete: count('delete', true) },
    errors,
    lastFailureMs: failures.length ? Math.max(...failures) : 0,
    firstWriteMs: firstWrite.length ? Math.min(...firstWrite) : Number.NaN,
  };
}

/**
 * Under a mixed load (plus a prober reading every blob touched, deleted ones too),
 * kills each fault's component with SIGKILL (or pauses it), waits, restarts it,
 * waits until the cluster is healthy and a write issued after the kill has
 * succeeded, then checks every acknowledged operation so far against the stores.
 * The load and the prober go through one RecordingClient (`sdk` of the result):
 * runAndVerify checks its history for linearizability.
 */
export async function runFaultSequence(fc: FaultCluster, o: SequenceOptions): Promise<SequenceResult> {
  const oplog = new OpLog();
  const faults: Fault[] = o.faults.map((n) => {
    const f = FAULTS[n];
    if (!f) throw new Error(`unknown fault ${n}`);
    return f();
  });
  // The load is stopped below; maxMs is only a safety net, so it covers the longest
  // each fault may legitimately take: a restart (60 s to start), waitHealthy (90 s),
  // the first write (60 s) and the check of everything acknowledged so far (which
  // grows with the log). A tighter bound ended the load of a healthy cluster on a
  // loaded machine ("the load ended before the cluster recovered", 0 violations).
  const perFaultMs = o.steadyMs + o.outageMs + o.settleMs + 60_000 + 90_000 + 60_000 + 120_000;
  const sdk = fc.recordingClient();
  const load = new MixedLoad(sdk, oplog, { ...o.load, maxMs: 60_000 + faults.length * perFaultMs });
  let stopProbe = false;
  const prober = startProber(sdk, oplog, () => stopProbe);
  const slow = o.slowReader
    ? startSlowReader(
        sdk,
        oplog,
        {
          gateways: () => fc.cluster.gateways.flatMap((g) => (g ? [g.address] : [])),
          security: fc.cluster.security,
          cacheRedisUrl: fc.cluster.redis?.url ?? '',
        },
        () => stopProbe,
        { ...(o.log ? { log: o.log } : {}) },
      )
    : undefined;
  let slowReads: SlowReaderStats | undefined;
  const reports: FaultReport[] = [];
  const kills: Array<{ fault: Fault; killed: string; at: number; restartedAt: number; healthyAt: number }> =
    [];
  const seen = new Set<string>();
  try {
    for (const fault of faults) {
      await sleep(o.steadyMs);
      const killed = await fault.kill(fc);
      const at = Date.now();
      o.log?.(`fault: ${killed}`);
      await sleep(o.outageMs);
      await fault.restart(fc);
      const restartedAt = Date.now();
      const note = await fault.after?.(fc);
      if (note) o.log?.(`${fault.name}: ${note}`);
      await fc.waitHealthy(90_000);
      const healthyAt = Date.now();
      o.log?.(`${fault.name}: restarted after ${restartedAt - at} ms, healthy after ${healthyAt - at} ms`);
      // Recovered once a write issued after the kill has succeeded (bounded).
      const deadline = Date.now() + 60_000;
      while (
        Date.now() < deadline &&
        !load.samples.some((s) => s.kind === 'write' && s.ok && s.start >= at)
      ) {
        if (!load.running) {
          throw new Error(
            `the load ended before the cluster recovered from ${fault.name} (${load.endReason}; ${load.samples.length} ops); process logs in ${fc.cluster.dataDir}`,
          );
        }
        await sleep(100);
      }
      const first = load.samples.find((s) => s.kind === 'write' && s.ok && s.start >= at);
      if (!first) {
        // A cluster that takes no write is not "recovered", whatever the checker says.
        const lastError = [...load.samples].reverse().find((s) => s.kind === 'write' && !s.ok)?.error;
        throw new Error(
          `no write succeeded within 60 s after ${fault.name} was healthy again (last write error: ${lastError ?? 'none'}); process logs in ${fc.cluster.dataDir}`,
        );
      }
      o.log?.(`${fault.name}: first write after the kill acknowledged at ${first.end - at} ms`);
      await sleep(o.settleMs);
      const checkedAt = Date.now();
      const violations = await quickCheck(oplog, fc.directory, checkedAt);
      const what = note ? `${killed}; ${note}` : killed;
      kills.push({ fault, killed: what, at, restartedAt, healthyAt });
      const fresh = violations.filter((v) => !seen.has(v.id));
      for (const v of fresh) seen.add(v.id);
      reports.push({
        fault: fault.name,
        killed: what,
        ...windowStats(load.samples, at, Number.POSITIVE_INFINITY),
        restartedAtMs: restartedAt - at,
        healthyAtMs: healthyAt - at,
        recoveryMs: 0,
        dataLost: fresh.length,
        violations: fresh,
        anomalies: 0,
      });
      o.log?.(
        `${fault.name}: recovered; ${violations.length} violations so far (quick check of ${oplog.blobs.size} blobs: ${((Date.now() - checkedAt) / 1000).toFixed(1)} s)`,
      );
      for (const v of fresh.slice(0, 3)) o.log?.(`  violation: ${v.id.slice(0, 16)}… ${v.what}`);
    }
  } finally {
    await load.stop();
    stopProbe = true;
    await prober;
    slowReads = await slow?.done;
  }
  // Windows end at the next kill.
  kills.forEach((k, i) => {
    const to = kills[i + 1]?.at ?? Number.POSITIVE_INFINITY;
    const r = reports[i] as FaultReport;
    Object.assign(r, windowStats(load.samples, k.at, to));
    r.recoveryMs = Math.max(r.firstWriteMs, r.lastFailureMs);
  });
  return {
    reports,
    oplog,
    samples: load.samples,
    wrongReads: load.wrongReads,
    sdk,
    ...(slowReads ? { slowReads } : {}),
    windows: kills.map((k) => k.at),
  };
}

/**
 * After the faults: replica counts back at target, then the full check and a scrub
 * of every store. The full check's SDK reads go through `o.sdk` (default `fc.sdk`):
 * the run's RecordingClient adds them to its history.
 */
export async function verifyEverything(
  fc: FaultCluster,
  oplog: OpLog,
  o: { replicatedWithinMs: number; log?: (line: string) => void; sdk?: HaystackClient },
): Promise<{ replicatedMs: number; checkMs: number; violations: Violation[]; corruptNeedles: string[] }> {
  const rep = await waitReplicated(oplog, fc.directory, o.replicatedWithinMs);
  // Writes of unknown outcome may sit on some members only (the call died mid-way);
  // anti-entropy converges them: run its full round now rather than wait for ANTI_ENTROPY_INTERVAL.
  await sleep(2_000);
  await fc.audit();
  const t0 = Date.now();
  const violations = await fullCheck(oplog, o.sdk ?? fc.sdk, fc.directory, fc.storeAddresses(), o.log);
  const checkMs = Date.now() - t0;
  return { replicatedMs: rep.ms, checkMs, violations, corruptNeedles: await scrubAll(fc) };
}

/**
 * Scrubs every store (all at once: each is its own process) and lists the corrupt
 * needles. A store of the full suite holds over a gigabyte by the end: minutes
 * under load, so the bound is generous.
 */
export async function scrubAll(fc: FaultCluster): Promise<string[]> {
  const found = await Promise.all(
    fc.cluster.stores.map(async (_, i) => {
      const res = await fc.store(i).scrub({ volumeId: 0 }, { timeoutMs: 600_000 });
      return res.corrupt.map((c) => `store-${i}: ${c.blobId} (${c.reason ?? ''})`);
    }),
  );
  return found.flat();
}

/**
 * The fault sequence, then verifyEverything, then the linearizability check of the
 * recorded history (the load's, the prober's and the full check's calls); prints
 * the per-fault table, the acknowledged counts, the history's size and every
 * anomaly (describeAnomaly), and any violation, and saves the report as `name`.
 */
export async function runAndVerify(
  fc: FaultCluster,
  name: string,
  o: SequenceOptions & { replicatedWithinMs: number },
): Promise<{
  res: SequenceResult;
  v: Awaited<ReturnType<typeof verifyEverything>>;
  counts: ReturnType<OpLog['counts']>;
  history: HistorySummary;
}> {
  const log = o.log ?? (() => {});
  const res = await runFaultSequence(fc, o);
  const v = await verifyEverything(fc, res.oplog, {
    replicatedWithinMs: o.replicatedWithinMs,
    log,
    sdk: res.sdk,
  });
  const counts = res.oplog.counts();
  const history = checkRecorded(res.sdk);
  const early = attributeAnomalies(res.reports, res.windows, history.anomalyStarts);
  log(
    `\n${faultTable(res.reports)}\n\nacknowledged: ${JSON.stringify(counts)}; replicas at target after ${v.replicatedMs} ms; full check ${(v.checkMs / 1000).toFixed(1)} s; ` +
      `history: ${history.ops} ops on ${history.keys} blobs, ${history.anomalies.length} not linearizable (${early} before the first fault)` +
      (res.slowReads ? `; ${describeSlowReads(res.slowReads)}` : ''),
  );
  // The first ten in full (each prints the blob's whole history); all are in the report.
  for (const a of history.anomalies.slice(0, 10)) log(a);
  for (const r of res.reports) {
    if (r.violations.length > 0) log(`${r.fault}: ${JSON.stringify(r.violations)}`);
  }
  await saveReport(name, { reports: res.reports, counts, ...v, history });
  return { res, v, counts, history };
}

export interface CorruptionReport {
  blobId: string;
  corrupted: string[];
  /**
   * Per damaged replica, the code of a direct read right after the flips (DataLoss),
   * or that a scrub found it first and the copy was already rewritten (also ends in
   * DataLoss); "OK" means the damage went unnoticed.
   */
  detected: string[];
  /** SDK reads with the cache emptied before each: all must return the acknowledged bytes. */
  servedCorrectly: number;
  reads: number;
  /** Until every replica the directory lists returns the right bytes at the target count (ms). */
  repairedMs: number;
}

/**
 * Flips bytes of one blob's needle on its first `damage` replicas (behind the
 * stores' backs; the directory lists replicas in a stable order, so these are the
 * ones a gateway reads first), then: direct reads of the damaged replicas fail
 * with DATA_LOSS; reads through the SDK (cache emptied each time) get the right
 * bytes from a healthy replica; the stores' corruption reports and scrubs get the
 * damaged copies replaced within the bound.
 */
export async function corruptAndRepair(
  fc: FaultCluster,
  o: { damage: number; repairWithinMs: number; seed: number },
): Promise<CorruptionReport> {
  const repairWithinMs = o.repairWithinMs;
  const data = payload(48 * 1024, o.seed);
  const sha = sha256hex(data);
  await fc.sdk.upload(data, { sha256: sha });
  const loc = (await locateAll(fc.directory, [sha])).get(sha);
  if (!loc?.found || !loc.blob || loc.replicas.length <= o.damage) {
    throw new Error(`blob not placed on more than ${o.damage} replicas`);
  }
  // The first replicas listed: the ones a gateway reads first. All are flipped (the
  // index finds the needle: milliseconds), then each is read directly. The manager
  // also scrubs every store (SCRUB_INTERVAL): a scrub may find a flipped copy and
  // have it rewritten from a healthy replica before the read, which is then OK —
  // detected all the same, by the scrub, as the store's corrupt-needle counter shows
  // (nothing else in the cluster is corrupt). Before, flipping meant reading each
  // gigabyte volume whole; a scrub repaired the first copy in those seconds.
  const damaged = loc.replicas.slice(0, o.damage);
  const scrubbedBefore = await Promise.all(damaged.map((r) => scrubFoundCorrupt(r.address)));
  const corrupted: string[] = [];
  for (const r of damaged) {
    const i = Number(/store-(\d+)/.exec(r.storeId)?.[1]);
    corrupted.push(`${r.storeId}:${await flipBytesOnDisk(fc.storeDataDir(i), sha)}`);
  }
  const detected: string[] = [];
  for (const [k, r] of damaged.entries()) {
    const code = await readBlob(store(r.address), sha).then(
      () => 'OK',
      (e: unknown) => Code[ConnectError.from(e).code],
    );
    const byScrub = code === 'OK' && (await scrubFoundCorrupt(r.address)) > (scrubbedBefore[k] ?? 0);
    detected.push(
      `${r.storeId}: ${byScrub ? 'found by a scrub and rewritten before the read: DataLoss' : code}`,
    );
  }
  const redis = redisClient(fc.cluster.redis?.url ?? '', { maxRetriesPerRequest: 1 });
  let served = 0;
  const reads = 5;
  try {
    for (let i = 0; i < reads; i++) {
      await redis.del(`haystack:blob:${sha}`).catch(() => 0);
      const got = await fc.sdk.download(sha, { timeoutMs: 20_000 });
      if (sha256hex(got.data) === sha) served++;
    }
  } finally {
    redis.disconnect();
  }
  const t0 = Date.now();
  let seen = '';
  for (;;) {
    const l = (await locateAll(fc.directory, [sha])).get(sha);
    let good = 0;
    const states: string[] = [];
    for (const r of l?.replicas ?? []) {
      const ok = await readBlob(store(r.address), sha).then(
        (b) => (sha256hex(b) === sha ? 'ok' : 'other bytes'),
        (e: unknown) => Code[ConnectError.from(e).code] ?? 'error',
      );
      states.push(`${r.storeId}:${ok}`);
      if (ok === 'ok') good++;
    }
    seen = `corrupted ${corrupted.join(', ')}; detected ${detected.join(', ')}; replicas now ${states.join(', ')}`;
    const target = l?.blob?.targetReplicaCount ?? 0;
    if (l?.found && good === target && l.replicas.length === target) break;
    if (Date.now() - t0 > repairWithinMs) {
      throw new Error(
        `blob ${sha} not repaired within ${repairWithinMs} ms: ${good}/${target} good replicas (${seen})\n${fc.logs()}`,
      );
    }
    await sleep(500);
  }
  return { blobId: sha, corrupted, detected, servedCorrectly: served, reads, repairedMs: Date.now() - t0 };
}

/**
 * The store's count of current (served) corrupt needles its scrubs found
 * (`haystack_store_scrub_corrupt_needles_total{kind="current"}` on its /metrics).
 */
async function scrubFoundCorrupt(address: string): Promise<number> {
  const { body } = await httpsGet(`https://${address}/metrics`);
  const m = /^haystack_store_scrub_corrupt_needles_total\{[^}]*kind="current"[^}]*\} (\d+)/m.exec(body);
  return Number(m?.[1] ?? 0);
}

export interface FullDiskReport {
  mechanism: string;
  written: number;
  /** Codes of the refused writes once full (RESOURCE_EXHAUSTED expected). */
  refusals: string[];
  readsOk: number;
  deleted: number;
  /** From the deletes + compaction until the first accepted write (ms). */
  resumedMs: number;
  writtenAfter: number;
  violations: Violation[];
  corruptNeedles: string[];
}

const codeOf = (e: unknown) =>
  e instanceof ResourceExhaustedError
    ? 'RESOURCE_EXHAUSTED'
    : ((e as { codeName?: string }).codeName ?? String(e));

/**
 * Fills every store (a tiny volume limit, or a small filesystem), then checks:
 * writes are refused with RESOURCE_EXHAUSTED, everything acknowledged reads back
 * intact, no needle is corrupt; after deletes and compaction (space returns)
 * writes are accepted again.
 */
/**
 * The full-disk cluster: each store may hold two volumes of 1 MiB (sealed at 7/8),
 * so a few dozen 40 KiB blobs fill it; one manager, so compaction is its alone.
 */
export const FULL_DISK_CLUSTER = {
  stores: 3,
  managers: 1,
  storeEnv: { MAX_VOLUME_SIZE: '1MiB', MAX_VOLUMES: '2', COMPACTION_EFFICIENCY_THRESHOLD: '0.9' },
};

/** The fillDisk workload that matches FULL_DISK_CLUSTER (space returns by deletes, then compaction). */
export const FULL_DISK_WRITES = {
  mechanism: 'MAX_VOLUMES=2 × MAX_VOLUME_SIZE=1MiB',
  blobSize: 40 * 1024,
  maxWrites: 200,
  resumeWithinMs: 60_000,
};

export async function fillDisk(
  fc: FaultCluster,
  o: {
    mechanism: string;
    blobSize: number;
    maxWrites: number;
    resumeWithinMs: number;
    /** Writes tried again once full, a second apart. */
    probes: number;
    log?: (line: string) => void;
  },
): Promise<FullDiskReport> {
  const oplog = new OpLog();
  let seed = 0x5eed0000;
  // No SDK retries: a refusal must come back as it is, not after minutes of retrying UNAVAILABLE.
  const once = new HaystackClient({ url: fc.cluster.url, retries: 0, timeoutMs: 30_000 });
  const write = async () => {
    const data = payload(o.blobSize, seed++);
    const sha = sha256hex(data);
    oplog.beginWrite(sha, sha, data.length, true);
    try {
      await once.upload(data, { sha256: sha, timeoutMs: 30_000 });
      oplog.endWrite(sha, true);
    } catch (err) {
      oplog.endWrite(sha, false);
      throw err;
    }
  };
  let written = 0;
  let firstRefusal: unknown;
  for (let i = 0; i < o.maxWrites; i++) {
    try {
      await write();
      written++;
    } catch (e) {
      firstRefusal = e;
      break;
    }
  }
  if (!firstRefusal) throw new Error(`${o.maxWrites} writes fit: the disk never filled`);
  o.log?.(`full after ${written} writes: ${String(firstRefusal)}`);
  const refusals = [codeOf(firstRefusal)];
  // Once the stores' heartbeats have told the directory, it refuses too.
  for (let i = 0; i < o.probes; i++) {
    await sleep(1000);
    refusals.push(await write().then(() => 'OK', codeOf));
  }
  let readsOk = 0;
  for (const b of oplog.live()) {
    const got = await fc.sdk.download(b.id, { timeoutMs: 20_000 });
    if (sha256hex(got.data) === b.sha) readsOk++;
  }
  // Space returns: delete three quarters, compact.
  const victims = oplog.live().filter((_, i) => i % 4 !== 0);
  for (const b of victims) {
    oplog.beginDelete(b.id);
    await fc.sdk.delete(b.id);
    oplog.endDelete(b.id, true);
  }
  o.log?.(`refusals ${refusals.join(', ')}; ${readsOk} reads ok; ${victims.length} deleted`);
  const t0 = Date.now();
  let writtenAfter = 0;
  for (;;) {
    for (let i = 0; i < fc.cluster.stores.length; i++) {
      await fc
        .store(i)
        .compact({ volumeId: 0, force: false }, { timeoutMs: 30_000 })
        .catch(() => undefined);
    }
    const ok = await write().then(
      () => true,
      (e: unknown) => {
        o.log?.(`not yet: ${String(e).slice(0, 200)}`);
        return false;
      },
    );
    if (ok) {
      writtenAfter++;
      break;
    }
    if (Date.now() - t0 > o.resumeWithinMs)
      throw new Error(`writes did not resume within ${o.resumeWithinMs} ms`);
    await sleep(500);
  }
  const resumedMs = Date.now() - t0;
  for (let i = 0; i < 5; i++) {
    await write();
    writtenAfter++;
  }
  const violations = await fullCheck(oplog, fc.sdk, fc.directory, fc.storeAddresses());
  const corruptNeedles = await scrubAll(fc);
  return {
    mechanism: o.mechanism,
    written,
    refusals,
    readsOk,
    deleted: victims.length,
    resumedMs,
    writtenAfter,
    violations,
    corruptNeedles,
  };
}

/** A Markdown table of the per-fault results. */
export function faultTable(reports: FaultReport[]): string {
  const s = (ms: number) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(1)} s` : '–');
  return [
    '| fault | killed | failed (w/r/d) | ok (w/r/d) | restarted | healthy | first write | recovery | data lost | anomalies |',
    '|---|---|---|---|---:|---:|---:|---:|---:|---:|',
    ...reports.map(
      (r) =>
        `| ${r.fault} | ${r.killed} | ${r.failed.write}/${r.failed.read}/${r.failed.delete} | ${r.ok.write}/${r.ok.read}/${r.ok.delete} | ${s(r.restartedAtMs)} | ${s(r.healthyAtMs)} | ${s(r.firstWriteMs)} | ${s(r.recoveryMs)} | ${r.dataLost} | ${r.anomalies} |`,
    ),
  ].join('\n');
}

/** Writes the run's report to test-results/ (JSON) and returns the Markdown. */
export async function saveReport(name: string, report: Record<string, unknown>): Promise<string> {
  const dir = path.resolve('test-results');
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `${name}.json`);
  await writeFile(file, `${JSON.stringify(report, null, 2)}\n`);
  return file;
}
