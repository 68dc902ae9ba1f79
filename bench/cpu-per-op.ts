// npm run bench:cpu — CPU time per operation of every process on each hot path, the
// figure a shared 2-core box distorts least (throughput swings with the load; the CPU
// a process spends per op does not, much). Starts the bench cluster (bench/target.ts:
// mTLS, Envoy, 3 stores, 2 gateways…), runs a fixed number of operations per phase
// at a fixed concurrency and reads utime+stime of every descendant process from
// /proc/<pid>/stat before and after (10 ms ticks: phases run enough ops to dwarf
// that), plus this process's own CPU (the SDK client) and its reaped children's
// (wrk, `weed benchmark`). Phases, per size:
//   write      SDK upload through Envoy (3 replicas, fsync'd)
//   read-miss  SDK download through Envoy, cache emptied first (every read goes to a store)
//   http-get   wrk GET /blobs/{id} through Envoy (cache hit at the gateway), fixed seconds,
//              with the SDK's bearer token (the gateway and Envoy verify it)
// Each process's idle CPU (measured --idle-seconds with no load after the warm-up) is
// printed and subtracted from its per-op figure: at a few dozen ops/s the timers of a
// dozen processes would otherwise dominate.
// With --seaweedfs, the same figures for SeaweedFS (master + 3 volume servers, `weed
// benchmark` -fsync writes, reads; wrk at a volume server).
// Also: Envoy's TLS handshakes and upstream connections per op (admin /stats), and with
// --strace, syscalls per op of the first gateway and the first store (strace -c -f;
// slows them, so its CPU figures are not comparable: a separate run).
// --perf DIR: `perf record -g` of the first gateway and store per phase (on-CPU samples,
// unlike --prof's wall-clock ones; Node runs with --perf-basic-prof for JS names).
// --prof DIR: the gateways and stores run with --cpu-prof into DIR (stopped by SIGTERM
// at the end so the profiles are written).
// --perf-stat EVENTS: `perf stat -e EVENTS` on every store and gateway per phase, printed
// as counts per op by role: events that count work rather than time (syscalls, uprobes
// on Node's TLS and HTTP/2 functions, see docs/benchmarks.md) do not depend on the load.
//
// Flags: --ops (2000 per phase), --warmup (500 writes first: JIT, connections, volumes), --concurrency (16), --sizes (1KiB,64KiB), --phases
// (write,read-miss,http-get), --wrk-seconds (5), --seaweedfs, --strace, --prof DIR, --perf DIR,
// --perf-stat EVENTS, --env KEY=VALUE (repeatable, for our servers).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { ClusterOptions } from '../test/helpers/cluster.js';
import { Load } from './load.js';
import { SeaweedCluster } from './seaweedfs.js';
import { localTarget, parseEnvFlags } from './target.js';
import { parseSizes, payload, sizeLabel } from './workload.js';
import { ensureWrk, wrk } from './wrk.js';

const { values: flags } = parseArgs({
  options: {
    ops: { type: 'string', default: '2000' },
    concurrency: { type: 'string', default: '16' },
    sizes: { type: 'string', default: '1KiB,64KiB' },
    phases: { type: 'string', default: 'write,read-miss,http-get' },
    'wrk-seconds': { type: 'string', default: '5' },
    'idle-seconds': { type: 'string', default: '5' },
    warmup: { type: 'string', default: '500' },
    seaweedfs: { type: 'boolean', default: false },
    ours: { type: 'boolean', default: true },
    strace: { type: 'boolean', default: false },
    prof: { type: 'string' },
    perf: { type: 'string' },
    'perf-stat': { type: 'string' },
    env: { type: 'string', multiple: true, default: [] },
  },
  allowNegative: true,
});
const OPS = Number(flags.ops);
const C = Number(flags.concurrency);
const SIZES = parseSizes(flags.sizes as string);
const PHASES = new Set((flags.phases as string).split(','));
const WRK_S = Number(flags['wrk-seconds']);
const IDLE_S = Number(flags['idle-seconds']);
const WARMUP = Number(flags.warmup);
const TICK_US = 1e6 / Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

/** utime+stime (µs) and, for this process, reaped children's cutime+cstime. */
function procCpu(pid: number): { self: number; children: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // Fields after "(comm) ": state=0, ppid=1 … utime=11, stime=12, cutime=13, cstime=14.
    return {
      self: (Number(f[11]) + Number(f[12])) * TICK_US,
      children: (Number(f[13]) + Number(f[14])) * TICK_US,
    };
  } catch {
    return undefined;
  }
}

/** Every descendant of this process, labelled by role (gateway, store, envoy, redis…). */
function descendants(): Map<number, string> {
  const parent = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone
    }
  }
  const out = new Map<number, string>();
  const walk = (p: number) => {
    for (const [c, pp] of parent) {
      if (pp !== p || out.has(c)) continue;
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${c}/cmdline`, 'utf8').split('\0').join(' ');
      } catch {}
      const role =
        /haystack\.js (gateway|store|directory|replication)/.exec(cmd)?.[1] ??
        (/envoy/.test(cmd)
          ? 'envoy'
          : /redis-server/.test(cmd)
            ? 'redis'
            : /weed.* (master|volume)/.exec(cmd)?.[1]
              ? `weed-${/weed.* (master|volume)/.exec(cmd)?.[1]}`
              : undefined);
      if (role) out.set(c, role);
      walk(c);
    }
  };
  walk(process.pid);
  return out;
}

type CpuSnap = Map<string, number>;
function snapshot(): CpuSnap {
  const m: CpuSnap = new Map();
  const add = (k: string, v: number) => m.set(k, (m.get(k) ?? 0) + v);
  for (const [pid, role] of descendants()) {
    const c = procCpu(pid);
    if (c) add(role, c.self);
  }
  const me = process.cpuUsage();
  add('client (SDK, this process)', me.user + me.system);
  const mine = procCpu(process.pid);
  if (mine) add('wrk / weed benchmark', mine.children);
  return m;
}

async function envoyStats(adminUrl: string | undefined): Promise<Map<string, number>> {
  const m = new Map<string, number>();
  if (!adminUrl) return m;
  const text = await (await fetch(`${adminUrl}/stats?usedonly`)).text();
  for (const line of text.split('\n')) {
    const [k, v] = line.split(': ');
    if (!k || v === undefined || !/^\d+$/.test(v)) continue;
    const key = /ssl\.handshake$/.test(k)
      ? k.startsWith('listener') || k.startsWith('http.')
        ? 'downstream TLS handshakes'
        : 'upstream TLS handshakes'
      : /^cluster\.[^.]+\.upstream_cx_total$/.test(k)
        ? 'upstream connections opened'
        : /^http\.[^.]+\.downstream_cx_total$/.test(k)
          ? 'downstream connections opened'
          : undefined;
    if (key) m.set(key, (m.get(key) ?? 0) + Number(v));
  }
  return m;
}

/** CPU µs per second of each role with no load (set by measureIdle). */
let idleRate = new Map<string, number>();

/** The idle CPU of every role over `seconds` (printed; subtracted from every phase). */
async function measureIdle(system: string, seconds: number): Promise<void> {
  idleRate = new Map();
  const a = snapshot();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const b = snapshot();
  const rate = new Map<string, number>();
  for (const [k, v] of b)
    if (!k.startsWith('client') && !k.startsWith('wrk')) rate.set(k, (v - (a.get(k) ?? 0)) / seconds / 1e6);
  idleRate = rate;
  console.log(
    `${system} idle CPU ms/s: ${[...rate].map(([k, v]) => `${k} ${(v * 1000).toFixed(1)}`).join(', ')}`,
  );
  rows.push({
    system,
    phase: 'idle (CPU ms per s)',
    size: '-',
    ops: 0,
    seconds,
    cpuUsPerOp: Object.fromEntries([...rate].map(([k, v]) => [k, v * 1000])),
    extra: {},
  });
}

interface Row {
  system: string;
  phase: string;
  size: string;
  ops: number;
  seconds: number;
  cpuUsPerOp: Record<string, number>;
  extra: Record<string, number>;
}
const rows: Row[] = [];

/** Runs `body`, returning CPU µs per op per role (and Envoy counters per op). */
async function measured(
  system: string,
  phase: string,
  size: number,
  adminUrl: string | undefined,
  body: () => Promise<number>,
  strace?: number[],
  counted?: Map<number, string>,
): Promise<void> {
  const tracers: ChildProcess[] = [];
  const traceOut: string[] = [];
  for (const pid of flags.strace ? (strace ?? []) : []) {
    const t = spawn('strace', ['-c', '-f', '-q', '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    t.stderr?.on('data', (d) => {
      err += d;
    });
    t.once('exit', () => traceOut.push(`pid ${pid}:\n${err}`));
    tracers.push(t);
  }
  if (flags.perf && strace?.length) {
    const out = path.join(flags.perf, `${system}-${phase}-${sizeLabel(size)}.perf.data`);
    tracers.push(
      spawn('perf', ['record', '-F', '999', '-g', '-o', out, '-p', strace.join(',')], { stdio: 'ignore' }),
    );
  }
  const counters: { role: string; out: string; p: ChildProcess }[] = [];
  for (const [pid, role] of flags['perf-stat'] ? (counted ?? new Map<number, string>()) : []) {
    const out = path.join(os.tmpdir(), `perf-stat-${process.pid}-${pid}.csv`);
    const p = spawn(
      'perf',
      ['stat', '-x', ',', '-o', out, '-e', flags['perf-stat'] as string, '-p', String(pid)],
      {
        stdio: 'ignore',
      },
    );
    counters.push({ role, out, p });
  }
  if (tracers.length || counters.length) await new Promise((r) => setTimeout(r, 500));
  const e0 = await envoyStats(adminUrl);
  const a = snapshot();
  const t0 = performance.now();
  const ops = await body();
  const seconds = (performance.now() - t0) / 1000;
  const b = snapshot();
  const e1 = await envoyStats(adminUrl);
  const cpu: Record<string, number> = {};
  let total = 0;
  for (const [k, v] of b) {
    // Less what the process burns idle over the same time (heartbeats, reports, timers).
    const d = (v - (a.get(k) ?? 0) - (idleRate.get(k) ?? 0) * seconds * 1e6) / ops;
    if (d > 0) {
      cpu[k] = d;
      total += d;
    }
  }
  cpu.total = total;
  const extra: Record<string, number> = {};
  for (const [k, v] of e1) extra[`${k} per op`] = (v - (e0.get(k) ?? 0)) / ops;
  rows.push({ system, phase, size: sizeLabel(size), ops, seconds, cpuUsPerOp: cpu, extra });
  const fmt = Object.entries(cpu)
    .map(([k, v]) => `${k} ${v.toFixed(0)}`)
    .join(', ');
  console.log(
    `${system} ${phase} ${sizeLabel(size)}: ${ops} ops in ${seconds.toFixed(1)} s (${(ops / seconds).toFixed(0)}/s); CPU µs/op: ${fmt}`,
  );
  if (Object.keys(extra).length) console.log(`   envoy: ${JSON.stringify(extra)}`);
  if (counters.length) {
    for (const c of counters) c.p.kill('SIGINT');
    await Promise.all(
      counters.map((c) => new Promise((r) => (c.p.exitCode === null ? c.p.once('exit', r) : r(0)))),
    );
    const per = new Map<string, number>();
    for (const c of counters) {
      for (const line of readFileSync(c.out, 'utf8').split('\n')) {
        const f = line.split(',');
        if (f.length < 3 || !/^[\d.]+$/.test(f[0] ?? '')) continue;
        const k = `${c.role} ${f[2]}`;
        per.set(k, (per.get(k) ?? 0) + Number(f[0]));
      }
      rmSync(c.out, { force: true });
    }
    console.log(
      `   perf stat per op: ${[...per].map(([k, v]) => `${k} ${(v / ops).toFixed(1)}`).join(', ')}`,
    );
  }
  for (const t of tracers) t.kill('SIGINT');
  if (tracers.length) {
    await Promise.all(
      tracers.map((t) => new Promise((r) => (t.exitCode === null ? t.once('exit', r) : r(0)))),
    );
    for (const o of traceOut)
      console.log(`   strace (${ops} ops) ${o.split('\n').slice(0, 22).join('\n   ')}`);
  }
}

async function ours(): Promise<void> {
  const env = parseEnvFlags(flags.env as string[]);
  let nodeArgs: ClusterOptions['nodeArgs'];
  if (flags.prof) {
    mkdirSync(flags.prof, { recursive: true });
    const prof = ['--cpu-prof', `--cpu-prof-dir=${path.resolve(flags.prof)}`];
    nodeArgs = { gateway: prof, store: prof };
  }
  if (flags.perf) {
    mkdirSync(flags.perf, { recursive: true });
    nodeArgs = { gateway: ['--perf-basic-prof'], store: ['--perf-basic-prof'] };
  }
  const t = await localTarget({ env, ...(nodeArgs ? { nodeArgs } : {}) });
  const cl = t.cluster!;
  const admin = cl.envoy?.adminUrl;
  try {
    for (const size of SIZES) {
      const ids: string[] = [];
      let seq = 0;
      const runOps = async (n: number, op: (i: number) => Promise<void>) => {
        const load = new Load({ kind: 'op', concurrency: C, maxOps: n, op: (_w, i) => op(i) });
        const samples = await load.finished();
        const bad = samples.filter((s) => !s.ok);
        if (bad.length) console.log(`   ${bad.length} failed, e.g. ${bad[0]?.error}`);
        return samples.length - bad.length;
      };
      const write = async (i: number) => {
        const data = payload(size, (size * 7919 + seq++ + i) >>> 0);
        const sha = createHash('sha256').update(data).digest('hex');
        const b = await t.client.upload(data, { sha256: sha, timeoutMs: 60_000 });
        ids.push(b.id);
      };
      // Warm-up: connections, JIT, volumes.
      await runOps(WARMUP, write);
      if (size === SIZES[0]) await measureIdle('ours', IDLE_S);
      const straced = () =>
        flags.strace || flags.perf
          ? [cl.gateways[0]?.child.pid, cl.stores[0]?.child.pid].filter((p) => p !== undefined)
          : [];
      // Every store and gateway, for --perf-stat.
      const counted = () => {
        const m = new Map<number, string>();
        for (const p of cl.stores) if (p.child.pid !== undefined) m.set(p.child.pid, 'store');
        for (const p of cl.gateways) if (p.child.pid !== undefined) m.set(p.child.pid, 'gateway');
        return m;
      };
      if (PHASES.has('write'))
        await measured(
          'ours',
          'write',
          size,
          admin,
          () => runOps(OPS, write),
          straced() as number[],
          counted(),
        );
      if (PHASES.has('read-miss')) {
        await t.flushCache?.();
        const pool = ids.slice(-OPS);
        await measured(
          'ours',
          'read-miss',
          size,
          admin,
          () =>
            runOps(pool.length, async (i) => {
              await t.client.download(pool[i] as string, { timeoutMs: 30_000 });
            }),
          straced() as number[],
          counted(),
        );
      }
      if (PHASES.has('http-get')) {
        const url = `${t.url}/blobs/${ids[0]}`;
        await measured(
          'ours',
          'http-get',
          size,
          admin,
          async () => {
            const auth = { authorization: `Bearer ${process.env.HAYSTACK_TOKEN}` };
            const r = await wrk(url, { threads: 2, connections: C, seconds: WRK_S, headers: auth });
            if (Number.isNaN(r.opsPerSec)) throw new Error(`wrk: ${r.errors} errors in ${r.requests}`);
            return r.requests;
          },
          straced() as number[],
        );
      }
    }
  } finally {
    if (flags.prof) await Promise.all([...cl.gateways, ...cl.stores].map((p) => p.stop(20_000)));
    await t.close();
  }
}

async function seaweed(): Promise<void> {
  const weed = execFileSync('bash', ['bench/seaweedfs-build.sh'], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .pop()!;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cpu-weed-'));
  const cl = await SeaweedCluster.start(weed, dir);
  try {
    for (const size of SIZES) {
      const list = path.join(dir, `list-${size}.txt`);
      await cl.benchmark(size, C, ['-writeOnly', '-fsync', `-n=${Math.min(200, OPS)}`, `-list=${list}-warm`]);
      if (size === SIZES[0]) await measureIdle('seaweedfs', IDLE_S);
      if (PHASES.has('write'))
        await measured('seaweedfs', 'write', size, undefined, async () => {
          const f = await cl.benchmark(size, C, ['-writeOnly', '-fsync', `-n=${OPS}`, `-list=${list}`]);
          return f.completed;
        });
      if (PHASES.has('read-miss'))
        await measured('seaweedfs', 'read-miss', size, undefined, async () => {
          const f = await cl.benchmark(size, C, ['-readOnly', `-n=${OPS}`, `-list=${list}`]);
          return f.completed;
        });
      if (PHASES.has('http-get')) {
        const fid = readFileSync(list, 'utf8')
          .split('\n')
          .find((l) => l.trim() !== '' && !l.startsWith('#'))
          ?.trim();
        const url = `http://${await cl.locate(fid as string)}/${fid}`;
        await measured(
          'seaweedfs',
          'http-get',
          size,
          undefined,
          async () => (await wrk(url, { threads: 2, connections: C, seconds: WRK_S })).requests,
        );
      }
    }
  } finally {
    await cl.stop();
  }
}

if (PHASES.has('http-get')) ensureWrk();
const load0 = os.loadavg();
if (flags.ours) await ours();
if (flags.seaweedfs) await seaweed();
console.log(
  `\nuptime load average before ${load0.map((x) => x.toFixed(2)).join(' ')}, after ${os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')}`,
);
console.log(JSON.stringify(rows));
process.exit(0);
