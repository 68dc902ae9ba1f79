// npm run bench:directory — does the directory's state scale with the blob count?
// Applies the log entries of a cluster that stores --blobs blobs (one entry per blob
// stored; --workload placement or v1, see bench/directory-states.ts) to the directory's
// MetadataState through its real apply path and reports, at each checkpoint:
//   - heap per blob stored: (heapUsed + arrayBuffers after forced GCs − before) / blobs
//   - apply cost: µs per entry over the --window entries just before the checkpoint
// and at --snapshot-at counts (default 1 M and 10 M) and wherever the load stops:
//   - snapshot size (the bytes the directory writes) and encode time
//   - restart time: write the snapshot file, read it back, decode and restore, then
//     replay --replay further entries (what a restarted directory does)
//   - commit cost: --commit-window entries through the real LogStore (append, group
//     fsync per --commit-batch) in a fresh folder, µs per entry
// The load is bounded: it stops when it has run --max-seconds, or the heap passes
// --max-heap-mib, and says where and why. With per-blob records (v1) MetadataState
// splices a sorted id array on every insert (O(n)): expected to stop well before 10^7.
//
// Flags: --workload (placement | v1), --blobs (10000000), --checkpoints
// (100k,250k,500k,1M,2M,5M,10M), --snapshot-at (1M,10M), --window (10000), --replay
// (100000), --commit-window (20000), --commit-batch (256), --max-seconds (300),
// --max-heap-mib (6144), --out (bench/results).
// Re-executes itself with --expose-gc and a heap limit above --max-heap-mib.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { LogStore } from '../internal/directory/log-store.js';
import { type StateUnderTest, WORKLOADS } from './directory-states.js';
import { machine } from './report.js';
import { loadAverageLine, writeRunFiles } from './run-files.js';

const { values: flags } = parseArgs({
  options: {
    workload: { type: 'string', default: 'placement' },
    blobs: { type: 'string', default: '10M' },
    checkpoints: { type: 'string', default: '100k,250k,500k,1M,2M,5M,10M' },
    'snapshot-at': { type: 'string', default: '1M,10M' },
    window: { type: 'string', default: '10000' },
    replay: { type: 'string', default: '100000' },
    'commit-window': { type: 'string', default: '20000' },
    'commit-batch': { type: 'string', default: '256' },
    'max-seconds': { type: 'string', default: '300' },
    'max-heap-mib': { type: 'string', default: '6144' },
    out: { type: 'string', default: 'bench/results' },
  },
});

/** "10M", "250k", "1e6" or a plain count. */
function count(name: string, v: string): number {
  const m = /^(\d+(?:\.\d+)?(?:e\d+)?)([kKmM]?)$/.exec(v.trim());
  const n = m
    ? Number(m[1]) * (m[2]?.toLowerCase() === 'k' ? 1e3 : m[2]?.toLowerCase() === 'm' ? 1e6 : 1)
    : Number.NaN;
  if (!Number.isInteger(n) || n < 0)
    throw new Error(`--${name}: expected a count like 1M or 250k, got ${JSON.stringify(v)}`);
  return n;
}
const counts = (name: string, v: string) => v.split(',').map((x) => count(name, x));

const maxHeapMib = count('max-heap-mib', flags['max-heap-mib'] as string);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  const r = spawnSync(
    process.execPath,
    [
      '--expose-gc',
      `--max-old-space-size=${maxHeapMib + 2048}`,
      ...process.execArgv,
      ...process.argv.slice(1),
    ],
    { stdio: 'inherit' },
  );
  process.exit(r.status ?? 1);
}

const stateName = flags.workload as string;
const found = WORKLOADS[stateName];
if (!found) throw new Error(`--workload: one of ${Object.keys(WORKLOADS).join(', ')}; got ${stateName}`);
const spec = found;
const N = count('blobs', flags.blobs as string);
const checkpoints = counts('checkpoints', flags.checkpoints as string).filter((c) => c <= N);
if (!checkpoints.includes(N)) checkpoints.push(N);
const snapshotAt = new Set(counts('snapshot-at', flags['snapshot-at'] as string));
const window = count('window', flags.window as string);
const replay = count('replay', flags.replay as string);
const commitWindow = count('commit-window', flags['commit-window'] as string);
const commitBatch = Math.max(1, count('commit-batch', flags['commit-batch'] as string));
const maxSeconds = count('max-seconds', flags['max-seconds'] as string);

const log = (s: string) => process.stderr.write(`[directory-bench] ${s}\n`);
function heapBytes(): number {
  for (let i = 0; i < 3; i++) gc?.();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

interface Checkpoint {
  blobs: number;
  heapBytesPerBlob: number;
  applyUsPerEntry: number;
  /** Process CPU µs per entry in the same window (NaN where a guard stopped the load). */
  applyCpuUsPerEntry: number;
  elapsedSeconds: number;
}
interface SnapshotFigure {
  blobs: number;
  snapshotBytes: number;
  encodeSeconds: number;
  /** Write file + read + decode/restore + replay. */
  restartSeconds: number;
  restoreSeconds: number;
  /** Process CPU seconds of the restart (restore + replay): what it costs on an idle machine. */
  restartCpuSeconds: number;
  replayed: number;
  replayUsPerEntry: number;
  commitUsPerEntry: number;
}

/** The snapshot and restart figures of `state` at `n` blobs. */
async function snapshotFigures(state: StateUnderTest, n: number): Promise<SnapshotFigure> {
  log(`${n.toLocaleString('en-US')} blobs: snapshot, restart, commit window`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'haystack-directory-bench-'));
  try {
    let t = performance.now();
    const bytes = state.snapshot();
    const encodeSeconds = (performance.now() - t) / 1000;
    const file = path.join(dir, 'snapshot');
    writeFileSync(file, bytes);
    const snapshotBytes = bytes.length;
    // Restart: read the file back, rebuild the state, replay the log's tail.
    const tail = Array.from({ length: replay }, (_, k) => spec.entry(n + k));
    const cpu0 = process.cpuUsage();
    t = performance.now();
    const restored = state.restore(readFileSync(file));
    const restoreSeconds = (performance.now() - t) / 1000;
    const r0 = performance.now();
    for (const e of tail) restored.apply(e);
    const replaySeconds = (performance.now() - r0) / 1000;
    const restartSeconds = (performance.now() - t) / 1000;
    const cpu = process.cpuUsage(cpu0);
    tail.length = 0;
    // Commit: the real LogStore, group-committed batches, in a fresh folder.
    const store = await LogStore.open(path.join(dir, 'log'), pino({ level: 'silent' }), (err) => {
      throw err;
    });
    // Entries from the steady part of the workload (not the first), renumbered from 1.
    const entries = Array.from({ length: commitWindow }, (_, k) => {
      const e = spec.entry(n + replay + k);
      e.index = BigInt(k + 1);
      return e;
    });
    const c0 = performance.now();
    for (let k = 0; k < entries.length; k += commitBatch) {
      const batch = entries.slice(k, k + commitBatch);
      store.append(batch);
      await store.waitDurable((batch[batch.length - 1] as { index: bigint }).index);
    }
    const commitUsPerEntry = ((performance.now() - c0) * 1000) / Math.max(1, entries.length);
    await store.close();
    return {
      blobs: n,
      snapshotBytes,
      encodeSeconds,
      restartSeconds,
      restoreSeconds,
      restartCpuSeconds: (cpu.user + cpu.system) / 1e6,
      replayed: replay,
      replayUsPerEntry: replay ? (replaySeconds * 1e6) / replay : Number.NaN,
      commitUsPerEntry,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const host = machine();
const loadBefore = os.loadavg();
const base = heapBytes();
const state = spec.make();
const results: Checkpoint[] = [];
const snapshots: SnapshotFigure[] = [];
let stopReason = `loaded all ${N.toLocaleString('en-US')} blobs`;
let loaded = 0;
let windowUs = 0;
let windowCpuUs = 0;
let windowN = 0;
// µs per entry over the latest complete block of 10,000 entries (for where a guard stops it).
let blockUs = 0;
let lastBlockUs = Number.NaN;
const t0 = performance.now();
let next = 0;
for (let i = 0; i < N; i++) {
  const cp = checkpoints[next] as number;
  const e = spec.entry(i);
  // In the window also the process CPU time of each apply: wall time on a loaded
  // machine counts the time other processes held the core.
  const c0 = i + 1 > cp - window ? process.cpuUsage() : undefined;
  const a = performance.now();
  state.apply(e);
  const us = (performance.now() - a) * 1000;
  loaded = i + 1;
  blockUs += us;
  if (c0) {
    const c = process.cpuUsage(c0);
    windowCpuUs += c.user + c.system;
    windowUs += us;
    windowN++;
  }
  if (loaded === cp) {
    const heapPerBlob = (heapBytes() - base) / loaded;
    const row = {
      blobs: loaded,
      heapBytesPerBlob: heapPerBlob,
      applyUsPerEntry: windowUs / windowN,
      applyCpuUsPerEntry: windowCpuUs / windowN,
      elapsedSeconds: (performance.now() - t0) / 1000,
    };
    results.push(row);
    log(
      `${loaded.toLocaleString('en-US')} blobs: ${heapPerBlob.toFixed(0)} B/blob, apply ${row.applyUsPerEntry.toFixed(1)} µs/entry (CPU ${row.applyCpuUsPerEntry.toFixed(1)}), ${row.elapsedSeconds.toFixed(0)} s`,
    );
    windowUs = 0;
    windowCpuUs = 0;
    windowN = 0;
    next++;
    if (snapshotAt.has(loaded)) snapshots.push(await snapshotFigures(state, loaded));
  }
  if (loaded % 10_000 === 0) {
    lastBlockUs = blockUs / 10_000;
    blockUs = 0;
    const secs = (performance.now() - t0) / 1000;
    const heapMib = process.memoryUsage().heapUsed / 2 ** 20;
    if (secs > maxSeconds) {
      stopReason = `time guard: ${secs.toFixed(0)} s > --max-seconds ${maxSeconds} at ${loaded.toLocaleString('en-US')} blobs`;
      break;
    }
    if (heapMib > maxHeapMib) {
      stopReason = `heap guard: ${heapMib.toFixed(0)} MiB > --max-heap-mib ${maxHeapMib} at ${loaded.toLocaleString('en-US')} blobs`;
      break;
    }
  }
}
if (loaded < N) {
  log(stopReason);
  // Where it stopped: heap and the cost of the last entries, then snapshot and restart there.
  results.push({
    blobs: loaded,
    heapBytesPerBlob: (heapBytes() - base) / loaded,
    applyUsPerEntry: lastBlockUs,
    applyCpuUsPerEntry: Number.NaN,
    elapsedSeconds: (performance.now() - t0) / 1000,
  });
}
if (!snapshots.some((s) => s.blobs === loaded)) snapshots.push(await snapshotFigures(state, loaded));

const f = (v: number, d = 0) =>
  Number.isFinite(v) ? v.toLocaleString('en-US', { maximumFractionDigits: d }) : '–';
const md = [
  `# Directory state at scale (${stateName}) — ${new Date().toISOString()}`,
  '',
  `${spec.describe}. ${host.cpus} CPUs, Node ${host.node}. Entries applied one by one through the real apply path (MetadataState.apply).`,
  '',
  `Stopped: ${stopReason}.`,
  '',
  '| blobs | heap B/blob | apply µs/entry, wall (the --window entries before it) | apply CPU µs/entry | elapsed s |',
  '|---:|---:|---:|---:|---:|',
  ...results.map(
    (r) =>
      `| ${f(r.blobs)} | ${f(r.heapBytesPerBlob)} | ${f(r.applyUsPerEntry, 1)} | ${f(r.applyCpuUsPerEntry, 1)} | ${f(r.elapsedSeconds)} |`,
  ),
  '',
  `| blobs | snapshot | B/blob | encode s | restart s (read + restore + replay ${f(replay)}) | restart CPU s | restore s | replay µs/entry | commit µs/entry (LogStore, fsync per ${commitBatch}) |`,
  '|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ...snapshots.map(
    (s) =>
      `| ${f(s.blobs)} | ${f(s.snapshotBytes / 2 ** 20, 1)} MiB | ${f(s.snapshotBytes / s.blobs)} | ${f(s.encodeSeconds, 2)} | ` +
      `${f(s.restartSeconds, 2)} | ${f(s.restartCpuSeconds, 2)} | ${f(s.restoreSeconds, 2)} | ${f(s.replayUsPerEntry, 1)} | ${f(s.commitUsPerEntry, 1)} |`,
  ),
  '',
  'Goals (issue 11): ≤ 64 B of RAM per blob (or RAM bounded independent of the count), apply/commit cost at 10 M within 2× of 1 M, restart at 10 M ≤ 10 s.',
  '',
  loadAverageLine(loadBefore),
  '',
].join('\n');
const files = writeRunFiles(
  flags.out as string,
  'directory',
  host,
  { state: stateName, blobs: N, loaded, stopReason, checkpoints: results, snapshots, maxSeconds, maxHeapMib },
  md,
);
process.stdout.write(`${md}\nwrote ${files.json} and ${files.md}\n`);
