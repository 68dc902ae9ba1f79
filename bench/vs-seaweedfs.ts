// npm run bench:vs-seaweedfs — this project against SeaweedFS on the same machine,
// same workload, one run: rounds alternate (ours, SeaweedFS, ours, SeaweedFS…), each
// system started fresh for its round and stopped (by pid) after it, `uptime` taken
// before every round. Everything binds 127.0.0.1.
//
// Ours: the cluster `npm run bench` starts (bench/target.ts: 2 Redis, 3 directories,
// 3 stores, the replication manager, 2 gateways, Envoy with its upload rate limits
// lifted), driven through Envoy with the SDK (bench/phases.ts sizeRun):
//   write       3 replicas, each fdatasync'd before the store answers, acked after all 3
//   read-hit    reads of what was written (the writes filled the gateways' Redis cache)
//   read-miss   the cache is emptied before each pass; SDK → Envoy → gateway → store
//   http-get    wrk GET /blobs/{id} through Envoy (one blob per size)
// SeaweedFS (bench/seaweedfs.ts): 1 master + 3 volume servers, replication 002, its own
// client `weed benchmark` (count-based):
//   write-fsync -fsync: every replica fsyncs before the ack (the comparable write)
//   write       no fsync (reference only)
//   read-miss   random reads of what `write` wrote (SeaweedFS has no blob cache)
//   http-get    the same wrk GET /<fid> at a volume server
// Also samples the RSS of our gateways, stores and directories (and of SeaweedFS's
// processes) during each round: peak and mean.
// Goals (ours / SeaweedFS ops/s): writes ≥ 1.0, cache-miss reads ≥ 0.5, plain GET ≥ 0.5.
//
// Soak: a round starts fresh processes, and V8 compiles our hot paths for the first few
// thousand operations (the cluster spends ~20 % more CPU per 1 KiB write after 1,000 warm-up
// writes than after 8,000: bench/cpu-per-op.ts --warmup, docs/benchmarks.md run 13). A
// service runs for weeks, so by default each round first runs --soak seconds of the same
// phases, not counted (ours: every size's write, cache-hit and cache-miss phases and a short
// wrk; SeaweedFS, compiled ahead of time: one uncounted pass of its write-fsync and read
// phases per size). --soak 0 measures cold processes, as runs 1–12 in docs/benchmarks.md did.
//
// Flags: --rounds (2), --sizes (1KiB,64KiB), --concurrency (16), --duration s per ours
// phase (10), --warmup s (1), --soak s (60, above), --wrk-duration s (10), --weed-scale (1:
// multiplies the weed benchmark counts), --out (bench/results), --keep (keep SeaweedFS data),
// --env KEY=VALUE (repeatable; environment for our servers, e.g. PLACEMENT_GROUPS=256).
// weed: bench/seaweedfs-build.sh finds or builds it (WEED_BIN, PERF_BIN,
// HAYSTACK_BENCH_CACHE). Needs a built checkout (the npm script builds); installs wrk when missing.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { sizeRun } from './phases.js';
import { machine } from './report.js';
import { mergeRss, mib, type RssFigure, RssSampler, type Watched } from './rss.js';
import { writeRunFiles } from './run-files.js';
import { SeaweedCluster } from './seaweedfs.js';
import { localTarget, parseEnvFlags, type Target } from './target.js';
import { parseSizes, sizeLabel } from './workload.js';
import { ensureWrk, wrk } from './wrk.js';

const { values: flags } = parseArgs({
  options: {
    rounds: { type: 'string', default: '2' },
    sizes: { type: 'string', default: '1KiB,64KiB' },
    concurrency: { type: 'string', default: '16' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '1' },
    soak: { type: 'string', default: '60' },
    'wrk-duration': { type: 'string', default: '10' },
    'weed-scale': { type: 'string', default: '1' },
    out: { type: 'string', default: 'bench/results' },
    keep: { type: 'boolean', default: false },
    env: { type: 'string', multiple: true, default: [] },
  },
});
/** --env KEY=VALUE (repeatable): environment for every one of our servers, e.g. PLACEMENT_GROUPS=256. */
const serverEnv = parseEnvFlags(flags.env as string[]);
const positive = (name: string, v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0)
    throw new Error(`--${name}: expected a positive number, got ${JSON.stringify(v)}`);
  return n;
};
const nonNegative = (name: string, v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0)
    throw new Error(`--${name}: expected a number ≥ 0, got ${JSON.stringify(v)}`);
  return n;
};
const cfg = {
  rounds: positive('rounds', flags.rounds as string),
  sizes: parseSizes(flags.sizes as string),
  concurrency: positive('concurrency', flags.concurrency as string),
  durationS: positive('duration', flags.duration as string),
  warmupS: positive('warmup', flags.warmup as string),
  soakS: nonNegative('soak', flags.soak as string),
  wrkS: positive('wrk-duration', flags['wrk-duration'] as string),
  weedScale: positive('weed-scale', flags['weed-scale'] as string),
};

type System = 'ours' | 'seaweedfs';
/** One figure: a phase of one system for one size in one round. */
interface Figure {
  round: number;
  system: System;
  size: number;
  phase: string;
  opsPerSec: number;
  p50ms: number;
  p99ms: number;
  /** How many operations it counted, errors, and anything else worth keeping. */
  note: string;
}
interface RoundInfo {
  round: number;
  system: System;
  uptime: string;
  loadAverage: number[];
  seconds: number;
  error?: string;
}

const figures: Figure[] = [];
const rounds: RoundInfo[] = [];
const rss: Record<System, RssFigure[][]> = { ours: [], seaweedfs: [] };
const log = (s: string) => process.stderr.write(`[vs-seaweedfs] ${s}\n`);
const uptime = () => execFileSync('uptime', { encoding: 'utf8' }).trim();
const here = path.dirname(fileURLToPath(import.meta.url));

// What is running now, stopped on a signal.
let stopCurrent: (() => Promise<void>) | undefined;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    log(`${sig}: stopping what runs`);
    void (stopCurrent?.() ?? Promise.resolve()).finally(() => process.exit(130));
  });
}

function findWeed(): string {
  log('finding (or building, ~20 min cold) weed: bench/seaweedfs-build.sh');
  const out = execFileSync('bash', [path.join(here, 'seaweedfs-build.sh')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    timeout: 60 * 60_000,
  });
  return out.trim().split('\n').pop() as string;
}

/** --soak: our phases for every size, nothing counted (see the header). */
async function soakOurs(t: Target, round: number): Promise<void> {
  const perPhaseMs = Math.max(1000, (cfg.soakS * 1000) / (cfg.sizes.length * 4));
  log(`ours r${round}: soak ${cfg.soakS} s (not counted)`);
  for (const size of cfg.sizes) {
    await sizeRun(t, size, 1000 + round, {
      concurrency: cfg.concurrency,
      durationMs: perPhaseMs,
      warmupMs: 0,
      seed: 7,
    });
    const b = await t.client.upload(randomBytes(size), { timeoutMs: 60_000 });
    await wrk(`${t.url}/blobs/${b.id}`, {
      threads: 2,
      connections: cfg.concurrency,
      seconds: Math.max(1, Math.round(perPhaseMs / 1000)),
      headers: { authorization: `Bearer ${process.env.HAYSTACK_TOKEN ?? ''}` },
    });
  }
}

async function oursRound(round: number): Promise<void> {
  let t: Target | undefined;
  stopCurrent = async () => {
    await t?.close();
  };
  try {
    t = await localTarget({ env: serverEnv });
    const cluster = t.cluster;
    if (!cluster) throw new Error('the local target has no cluster');
    const watched = (): Watched[] =>
      (
        [
          ['gateway', cluster.gateways],
          ['store', cluster.stores],
          ['directory', cluster.directories],
        ] as const
      ).flatMap(([role, ps]) =>
        ps.flatMap((p) => (p.child.pid === undefined ? [] : [{ role, name: p.name, pid: p.child.pid }])),
      );
    if (cfg.soakS > 0) await soakOurs(t, round);
    const sampler = new RssSampler(watched);
    try {
      for (const size of cfg.sizes) {
        const r = await sizeRun(t, size, round, {
          concurrency: cfg.concurrency,
          durationMs: cfg.durationS * 1000,
          warmupMs: cfg.warmupS * 1000,
          seed: 42,
        });
        const add = (phase: string, m: typeof r.write | undefined) => {
          if (!m) return;
          const hits =
            m.cacheHitShare === undefined ? '' : `, cache hits ${(100 * m.cacheHitShare).toFixed(0)}%`;
          figures.push({
            round,
            system: 'ours',
            size,
            phase,
            opsPerSec: m.result.opsPerSec,
            p50ms: m.result.p50ms,
            p99ms: m.result.p99ms,
            note: `${m.result.ops} ok, ${m.result.errors} errors${hits}`,
          });
          log(`ours r${round} ${sizeLabel(size)} ${phase}: ${m.result.opsPerSec.toFixed(1)}/s`);
        };
        add('write', r.write);
        add('read-hit', r.hit);
        add('read-miss', r.miss);
        // Plain HTTP GET of one blob through Envoy (the gateway answers from its cache).
        const b = await t.client.upload(randomBytes(size), { timeoutMs: 60_000 });
        const url = `${t.url}/blobs/${b.id}`;
        const g = await wrk(url, {
          threads: 2,
          connections: cfg.concurrency,
          seconds: cfg.wrkS,
          headers: { authorization: `Bearer ${process.env.HAYSTACK_TOKEN ?? ''}` },
        });
        figures.push({
          round,
          system: 'ours',
          size,
          phase: 'http-get',
          opsPerSec: g.opsPerSec,
          p50ms: g.p50ms,
          p99ms: g.p99ms,
          note: `${Number.isNaN(g.opsPerSec) ? 'FAILED (> 1 % errors): ' : ''}${g.requests} requests, ${g.errors} errors, GET /blobs/{id} through Envoy`,
        });
        log(`ours r${round} ${sizeLabel(size)} http-get: ${g.opsPerSec.toFixed(1)}/s`);
      }
    } finally {
      rss.ours.push(sampler.stop());
    }
  } finally {
    stopCurrent = undefined;
    await t?.close();
  }
}

/** weed benchmark counts per size (sized for a few seconds each on 2 cores). */
function weedCounts(size: number): { write: number; fsync: number; read: number } {
  const s = cfg.weedScale;
  const base =
    size <= 4096 ? { write: 8000, fsync: 4000, read: 40000 } : { write: 4000, fsync: 2000, read: 15000 };
  return {
    write: Math.ceil(base.write * s),
    fsync: Math.ceil(base.fsync * s),
    read: Math.ceil(base.read * s),
  };
}

async function seaweedRound(weed: string, round: number): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `haystack-vs-seaweedfs-${round}-`));
  let c: SeaweedCluster | undefined;
  stopCurrent = async () => {
    await c?.stop(flags.keep);
  };
  try {
    c = await SeaweedCluster.start(weed, dir);
    const cl = c;
    const sampler = new RssSampler(() =>
      cl.pids.map((pid, i) => ({
        role: i === 0 ? 'seaweedfs master' : 'seaweedfs volume',
        name: `weed-${i}`,
        pid,
      })),
    );
    try {
      // Warm-up, not counted: the first writes make the master grow the collection's volumes.
      await c.benchmark(cfg.sizes[0] as number, cfg.concurrency, [
        '-writeOnly',
        `-n=${cfg.concurrency * 50}`,
        `-list=${path.join(dir, 'list-warmup.txt')}`,
      ]);
      if (cfg.soakS > 0) {
        log(`seaweedfs r${round}: soak, one uncounted write-fsync and read pass per size`);
        for (const size of cfg.sizes) {
          const n = weedCounts(size);
          const list = path.join(dir, `list-soak-${size}.txt`);
          await cl.benchmark(size, cfg.concurrency, [
            '-writeOnly',
            '-fsync',
            `-n=${n.fsync}`,
            `-list=${list}`,
          ]);
          await cl.benchmark(size, cfg.concurrency, ['-readOnly', `-n=${n.read}`, `-list=${list}`]);
        }
      }
      for (const size of cfg.sizes) {
        const n = weedCounts(size);
        const list = path.join(dir, `list-${size}.txt`);
        const one = async (phase: string, args: string[]) => {
          const f = await cl.benchmark(size, cfg.concurrency, args);
          figures.push({
            round,
            system: 'seaweedfs',
            size,
            phase,
            opsPerSec: f.opsPerSec,
            p50ms: f.p50ms,
            p99ms: f.p99ms,
            note: `${f.completed} ok, ${f.failed} failed in ${f.seconds} s`,
          });
          log(`seaweedfs r${round} ${sizeLabel(size)} ${phase}: ${f.opsPerSec.toFixed(1)}/s`);
        };
        await one('write', ['-writeOnly', `-n=${n.write}`, `-list=${list}`]);
        await one('read-miss', ['-readOnly', `-n=${n.read}`, `-list=${list}`]);
        await one('write-fsync', [
          '-writeOnly',
          '-fsync',
          `-n=${n.fsync}`,
          `-list=${path.join(dir, `list-${size}-fsync.txt`)}`,
        ]);
        const fid = readFileSync(list, 'utf8')
          .split('\n')
          .find((l) => l.trim() !== '' && !l.startsWith('#'))
          ?.trim();
        if (!fid) throw new Error(`no fid in ${list}`);
        const url = `http://${await cl.locate(fid)}/${fid}`;
        const g = await wrk(url, { threads: 2, connections: cfg.concurrency, seconds: cfg.wrkS });
        figures.push({
          round,
          system: 'seaweedfs',
          size,
          phase: 'http-get',
          opsPerSec: g.opsPerSec,
          p50ms: g.p50ms,
          p99ms: g.p99ms,
          note: `${Number.isNaN(g.opsPerSec) ? 'FAILED (> 1 % errors): ' : ''}${g.requests} requests, ${g.errors} errors, GET /<fid> at a volume server`,
        });
        log(`seaweedfs r${round} ${sizeLabel(size)} http-get: ${g.opsPerSec.toFixed(1)}/s`);
      }
    } finally {
      rss.seaweedfs.push(sampler.stop());
    }
  } finally {
    stopCurrent = undefined;
    await c?.stop(flags.keep);
  }
}

/** [ours phase, SeaweedFS phase, goal ratio or undefined for a reference row, label] */
const PAIRS: Array<[string, string, number | undefined, string]> = [
  ['write', 'write-fsync', 1.0, 'durable write (3 replicas, fsync before ack)'],
  ['read-miss', 'read-miss', 0.5, 'cache-miss read, full public path'],
  ['http-get', 'http-get', 0.5, 'plain HTTP GET (wrk)'],
  ['write', 'write', undefined, 'reference: SeaweedFS without fsync'],
  ['read-hit', 'read-miss', undefined, 'reference: our cache hits'],
];

const mean = (xs: number[]) => {
  const ok = xs.filter(Number.isFinite);
  return ok.length ? ok.reduce((a, b) => a + b, 0) / ok.length : Number.NaN;
};
const fmt = (v: number) =>
  !Number.isFinite(v) ? '–' : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
const ratio = (v: number) => (!Number.isFinite(v) ? '–' : v >= 0.1 ? v.toFixed(2) : v.toPrecision(2));

interface Row {
  size: string;
  ours: string;
  seaweedfs: string;
  what: string;
  oursOps: number[];
  seaweedOps: number[];
  ratio: number;
  perRound: number[];
  goal: number | undefined;
  met: boolean | undefined;
  oursP50: number;
  seaweedP50: number;
  oursP99: number;
  seaweedP99: number;
}

function rows(): Row[] {
  const out: Row[] = [];
  const pick = (sys: System, size: number, phase: string) =>
    Array.from({ length: cfg.rounds }, (_, i) =>
      figures.find((f) => f.system === sys && f.size === size && f.phase === phase && f.round === i + 1),
    );
  for (const size of cfg.sizes) {
    for (const [o, s, goal, what] of PAIRS) {
      const a = pick('ours', size, o);
      const b = pick('seaweedfs', size, s);
      const ao = a.map((f) => f?.opsPerSec ?? Number.NaN);
      const bo = b.map((f) => f?.opsPerSec ?? Number.NaN);
      const r = mean(ao) / mean(bo);
      out.push({
        size: sizeLabel(size),
        ours: o,
        seaweedfs: s,
        what,
        oursOps: ao,
        seaweedOps: bo,
        ratio: r,
        perRound: ao.map((x, i) => x / (bo[i] as number)),
        goal,
        met: goal === undefined || !Number.isFinite(r) ? undefined : r >= goal,
        oursP50: mean(a.map((f) => f?.p50ms ?? Number.NaN)),
        seaweedP50: mean(b.map((f) => f?.p50ms ?? Number.NaN)),
        oursP99: mean(a.map((f) => f?.p99ms ?? Number.NaN)),
        seaweedP99: mean(b.map((f) => f?.p99ms ?? Number.NaN)),
      });
    }
  }
  return out;
}

function markdown(rs: Row[], rssOurs: RssFigure[], rssWeed: RssFigure[], weedVersion: string): string {
  const l: string[] = [];
  l.push(`# Haystack vs SeaweedFS — ${new Date().toISOString()}`, '');
  l.push(
    `${os.cpus().length} CPUs (${os.cpus()[0]?.model.trim()}), ${Math.round(os.totalmem() / 1024 ** 3)} GiB; ` +
      `sizes ${cfg.sizes.map(sizeLabel).join(', ')}, concurrency ${cfg.concurrency}, ${cfg.rounds} rounds; ` +
      `${cfg.soakS > 0 ? `each round soaked first (${cfg.soakS} s of our phases; a pass of SeaweedFS's), not counted; ` : 'cold processes (no soak); '}` +
      `ours ${cfg.warmupS} s warm-up + ${cfg.durationS} s per phase; wrk ${cfg.wrkS} s; SeaweedFS ${weedVersion}` +
      `${
        Object.keys(serverEnv).length
          ? `; our servers with ${Object.entries(serverEnv)
              .map(([k, v]) => `${k}=${v}`)
              .join(' ')}`
          : ''
      }.`,
    '',
  );
  l.push(
    'Throughput (ops/s per round, r1 / r2 …); ratio = mean ours / mean SeaweedFS (per round in brackets).',
    '',
  );
  l.push(
    '| size | ours | SeaweedFS | ours ops/s | SeaweedFS ops/s | ratio | goal | p50 ms ours / SW | p99 ms ours / SW |',
  );
  l.push('|---|---|---|---:|---:|---:|---|---:|---:|');
  for (const r of rs) {
    const goal = r.goal === undefined ? '–' : `≥ ${r.goal.toFixed(1)} ${r.met ? 'met' : 'NOT met'}`;
    l.push(
      `| ${r.size} | ${r.ours} | ${r.seaweedfs}${r.goal === 1 ? ' *' : ''} | ${r.oursOps.map(fmt).join(' / ')} | ` +
        `${r.seaweedOps.map(fmt).join(' / ')} | **${ratio(r.ratio)}** (${r.perRound.map(ratio).join(' / ')}) | ${goal} | ` +
        `${fmt(r.oursP50)} / ${fmt(r.seaweedP50)} | ${fmt(r.oursP99)} / ${fmt(r.seaweedP99)} |`,
    );
  }
  l.push(
    '',
    "\\* SeaweedFS -fsync acks after its 3 replicas fsync'd; ours acks after 3 replicas fdatasync'd" +
      (Number(serverEnv.PLACEMENT_GROUPS ?? 0) > 0
        ? ' (placement groups: no directory commit).'
        : ' plus a majority-replicated directory commit (per-blob records).'),
    '',
    ...figures
      .filter((x) => !Number.isFinite(x.opsPerSec))
      .map((x) => `- failed figure: round ${x.round} ${x.system} ${sizeLabel(x.size)} ${x.phase}: ${x.note}`),
    '',
    'RSS during the rounds (sampled every 250 ms from /proc/<pid>/status):',
    '',
    '| process | count | peak | mean |',
    '|---|---:|---:|---:|',
  );
  for (const f of [...rssOurs, ...rssWeed]) {
    l.push(`| ${f.role} | ${f.processes} | ${mib(f.peakBytes)} | ${mib(f.meanBytes)} |`);
  }
  l.push('', '`uptime` before each round:', '');
  for (const r of rounds) {
    l.push(
      `- round ${r.round} ${r.system} (${r.seconds.toFixed(0)} s${r.error ? `, FAILED: ${r.error}` : ''}): ${r.uptime}`,
    );
  }
  l.push(`- after: ${uptime()}`, '');
  return l.join('\n');
}

const started = Date.now();
ensureWrk(); // before weed, which may take ~20 min to build
const weed = findWeed();
const weedVersion = execFileSync(weed, ['version'], { encoding: 'utf8' }).trim().split('\n')[0] ?? '';
log(`weed: ${weed} (${weedVersion})`);
const host = machine();
for (let round = 1; round <= cfg.rounds; round++) {
  for (const system of ['ours', 'seaweedfs'] as const) {
    const info: RoundInfo = { round, system, uptime: uptime(), loadAverage: os.loadavg(), seconds: 0 };
    log(`round ${round} ${system}: ${info.uptime}`);
    const t0 = Date.now();
    try {
      if (system === 'ours') await oursRound(round);
      else await seaweedRound(weed, round);
    } catch (err) {
      info.error = err instanceof Error ? err.message.split('\n')[0] : String(err);
      log(`round ${round} ${system} failed: ${err instanceof Error ? err.stack : String(err)}`);
    }
    info.seconds = (Date.now() - t0) / 1000;
    rounds.push(info);
  }
}
const rs = rows();
const rssOurs = mergeRss(rss.ours);
const rssWeed = mergeRss(rss.seaweedfs);
const md = markdown(rs, rssOurs, rssWeed, weedVersion);
const files = writeRunFiles(
  flags.out as string,
  'vs-seaweedfs',
  host,
  {
    startedAt: new Date(started).toISOString(),
    config: { ...cfg, sizes: cfg.sizes.map(sizeLabel), serverEnv },
    weed: { path: weed, version: weedVersion },
    rounds,
    figures,
    ratios: rs,
    rss: { ours: rssOurs, seaweedfs: rssWeed },
    durationSeconds: (Date.now() - started) / 1000,
  },
  md,
);
process.stdout.write(`${md}\nwrote ${files.json} and ${files.md}\n`);
process.exit(rounds.some((r) => r.error) ? 1 : 0);
