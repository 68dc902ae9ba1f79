// npm run bench — the whole system, measured: starts a local cluster of real
// processes (or targets HAYSTACK_URL) and measures, through Envoy with the SDK,
//   - writes/s (three replicas, durable), reads/s on cache hits and on cache
//     misses, p50/p95/p99, for 1 KiB, 64 KiB and 1 MiB blobs;
//   - the cache hit rate after warm-up under a Zipf read workload;
//   - leader failover (kill -9 the leader directory under load: time to the first
//     successful write, failed requests) and store failover (kill -9 a store
//     under a read load of cache misses: failed reads).
// Writes bench/results/<stamp>.json, .md and SVG charts; prints the Markdown
// with the seed's published figures next to ours. Deterministic workload
// (seeded), warm-up excluded, each figure the median of several runs.
//
// Flags (or environment): --sizes (BENCH_SIZES, 1KiB,64KiB,1MiB), --concurrency
// (BENCH_CONCURRENCY, 16), --duration seconds per measured phase (BENCH_DURATION, 3),
// --warmup seconds (BENCH_WARMUP, 1), --runs (BENCH_RUNS, 3), --seed (BENCH_SEED, 42),
// --phases (BENCH_PHASES, throughput,hitrate,leader,store), --failover-rounds
// (BENCH_FAILOVER_ROUNDS, 3), --zipf-keys (1000), --zipf-s (1.0), --zipf-size (16KiB),
// --cache-memory (8MiB), --zipf-reads (3000), --zipf-warmup (3000), --out (bench/results),
// --quick (a smoke run: small and short), --echo (server logs).
// HAYSTACK_URL targets an existing deployment (throughput and hit rate; the miss
// phase needs BENCH_CACHE_REDIS_URL to empty its cache).
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { leaderFailover, preparePool, storeFailover } from './failover.js';
import { histogram } from './load.js';
import { hitRateRun, type MeasuredPhase, prepareZipfKeys, type SizeRun, sizeRun } from './phases.js';
import { Progress } from './progress.js';
import {
  type BenchResults,
  machine,
  markdown,
  medianPhase,
  type SizeFigures,
  writeResults,
} from './report.js';
import { localTarget, remoteTarget, type Target } from './target.js';
import { median, parseSizes, sizeLabel, Zipf } from './workload.js';

const { values: flags } = parseArgs({
  options: {
    sizes: { type: 'string' },
    concurrency: { type: 'string' },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    runs: { type: 'string' },
    seed: { type: 'string' },
    phases: { type: 'string' },
    'failover-rounds': { type: 'string' },
    'zipf-keys': { type: 'string' },
    'zipf-s': { type: 'string' },
    'zipf-size': { type: 'string' },
    'cache-memory': { type: 'string' },
    'zipf-reads': { type: 'string' },
    'zipf-warmup': { type: 'string' },
    out: { type: 'string' },
    quick: { type: 'boolean' },
    echo: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (flags.help) {
  const src = await import('node:fs').then((fs) => fs.readFileSync(new URL(import.meta.url), 'utf8'));
  process.stdout.write(
    `${src
      .split('\n')
      .filter((l) => l.startsWith('//'))
      .map((l) => l.slice(3))
      .join('\n')}\n`,
  );
  process.exit(0);
}

const quick = flags.quick === true;
const opt = (flag: string | undefined, env: string, dflt: string, quickValue?: string) =>
  flag ?? process.env[env] ?? (quick && quickValue !== undefined ? quickValue : dflt);
const num = (name: string, v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name}: expected a number, got ${JSON.stringify(v)}`);
  return n;
};

const cfg = {
  sizes: parseSizes(opt(flags.sizes, 'BENCH_SIZES', '1KiB,64KiB,1MiB', '1KiB,64KiB')),
  concurrency: num('concurrency', opt(flags.concurrency, 'BENCH_CONCURRENCY', '16', '8')),
  durationMs: 1000 * num('duration', opt(flags.duration, 'BENCH_DURATION', '3', '1.5')),
  warmupMs: 1000 * num('warmup', opt(flags.warmup, 'BENCH_WARMUP', '1', '0.5')),
  runs: num('runs', opt(flags.runs, 'BENCH_RUNS', '3', '1')),
  seed: num('seed', opt(flags.seed, 'BENCH_SEED', '42')),
  phases: new Set(opt(flags.phases, 'BENCH_PHASES', 'throughput,hitrate,leader,store').split(',')),
  failoverRounds: num('failover-rounds', opt(flags['failover-rounds'], 'BENCH_FAILOVER_ROUNDS', '3', '1')),
  zipfKeys: num('zipf-keys', opt(flags['zipf-keys'], 'BENCH_ZIPF_KEYS', '1000', '300')),
  zipfS: num('zipf-s', opt(flags['zipf-s'], 'BENCH_ZIPF_S', '1.0')),
  zipfSize: parseSizes(opt(flags['zipf-size'], 'BENCH_ZIPF_SIZE', '16KiB'))[0] as number,
  cacheMemory: parseSizes(opt(flags['cache-memory'], 'BENCH_CACHE_MEMORY', '8MiB', '4MiB'))[0] as number,
  zipfReads: num('zipf-reads', opt(flags['zipf-reads'], 'BENCH_ZIPF_READS', '3000', '800')),
  zipfWarmupReads: num('zipf-warmup', opt(flags['zipf-warmup'], 'BENCH_ZIPF_WARMUP', '3000', '800')),
  out: opt(flags.out, 'BENCH_OUT', 'bench/results'),
};
for (const p of cfg.phases) {
  if (!['throughput', 'hitrate', 'leader', 'store'].includes(p)) throw new Error(`unknown phase ${p}`);
}

const started = performance.now();
const date = new Date().toISOString();
const host = machine();
const progress = new Progress();
const onOp = progress.op.bind(progress);
const onPhase = (name: string, total: number) => progress.phase(name, total, 'ms');
const onCountPhase = (name: string, total: number) => progress.phase(name, total, 'ops');

let target: Target | undefined;
const stopOnSignal = () => {
  progress.done();
  process.stderr.write('\ninterrupted: stopping the cluster\n');
  void (target?.close() ?? Promise.resolve()).finally(() => process.exit(130));
};
process.once('SIGINT', stopOnSignal);
process.once('SIGTERM', stopOnSignal);

try {
  const remote = process.env.HAYSTACK_URL;
  progress.log(
    remote ? `target: ${remote}` : 'starting a local cluster (3 directories, 3 stores, 2 gateways, Envoy)…',
  );
  target = remote ? await remoteTarget(remote) : await localTarget({ echo: flags.echo === true });
  const t = target;

  const results: BenchResults = {
    date,
    command: `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim(),
    machine: { ...host, loadAverageEnd: [] },
    target: t.kind === 'local' ? 'local cluster (real processes on loopback)' : t.url,
    settings: t.settings,
    config: {
      ...cfg,
      phases: [...cfg.phases],
      sizes: cfg.sizes.map(sizeLabel),
    },
    throughput: [],
    durationSeconds: 0,
  };
  const latencyGroups: Array<{ label: string; series: Array<{ name: string; latencies: number[] }> }> = [];

  if (cfg.phases.has('throughput')) {
    const phaseCfg = {
      concurrency: cfg.concurrency,
      durationMs: cfg.durationMs,
      warmupMs: cfg.warmupMs,
      seed: cfg.seed,
      onOp,
      onPhase,
    };
    for (const size of cfg.sizes) {
      const runs: SizeRun[] = [];
      for (let run = 1; run <= cfg.runs; run++) {
        runs.push(await sizeRun(t, size, run, phaseCfg));
      }
      const pick = (f: (r: (typeof runs)[0]) => MeasuredPhase | undefined) =>
        runs.map(f).filter((x): x is MeasuredPhase => x !== undefined);
      const w = pick((r) => r.write);
      const h = pick((r) => r.hit);
      const m = pick((r) => r.miss);
      const label = sizeLabel(size);
      const fig: SizeFigures = {
        size,
        write: medianPhase(
          `write ${label}`,
          w.map((x) => x.result),
        ),
        hit: medianPhase(
          `read ${label} (hit)`,
          h.map((x) => x.result),
          h.map((x) => x.cacheHitShare ?? Number.NaN),
        ),
        ...(m.length
          ? {
              miss: medianPhase(
                `read ${label} (miss)`,
                m.map((x) => x.result),
                m.map((x) => x.cacheHitShare ?? Number.NaN),
              ),
            }
          : {}),
      };
      results.throughput.push(fig);
      latencyGroups.push({
        label,
        series: [
          { name: `write ${label}`, latencies: w.flatMap((x) => x.latencies) },
          { name: `read ${label} hit`, latencies: h.flatMap((x) => x.latencies) },
          ...(m.length ? [{ name: `read ${label} miss`, latencies: m.flatMap((x) => x.latencies) }] : []),
        ],
      });
      // CPU per operation of the bench and its cluster (median of the runs), load-independent.
      const cpu = (xs: MeasuredPhase[]) => {
        const v = xs.map((x) => x.cpuMsPerOp ?? Number.NaN).sort((a, b) => a - b);
        if (v.length === 0) return '–';
        const mid = (v.length - 1) / 2;
        return (((v[Math.floor(mid)] as number) + (v[Math.ceil(mid)] as number)) / 2).toFixed(2);
      };
      progress.log(
        `${label}: writes ${fig.write.opsPerSec.toFixed(0)}/s, hit reads ${fig.hit.opsPerSec.toFixed(0)}/s, miss reads ${fig.miss?.opsPerSec.toFixed(0) ?? '–'}/s; CPU ms/op: writes ${cpu(w)}, hit reads ${cpu(h)}, miss reads ${cpu(m)}`,
      );
    }
  }

  if (cfg.phases.has('hitrate')) {
    const hcfg = {
      keys: cfg.zipfKeys,
      blobSize: cfg.zipfSize,
      zipfS: cfg.zipfS,
      cacheMemory: t.setCacheMemory ? cfg.cacheMemory : 0,
      warmupReads: cfg.zipfWarmupReads,
      measuredReads: cfg.zipfReads,
      concurrency: cfg.concurrency,
      seed: cfg.seed,
      onOp,
      onPhase: onCountPhase,
    };
    const ids = await prepareZipfKeys(t, hcfg);
    const runs = [];
    for (let run = 1; run <= cfg.runs; run++) runs.push(await hitRateRun(t, ids, hcfg, run));
    // An ideal cache of this memory holds about memory / (blob size + per-entry overhead) blobs.
    const fits = hcfg.cacheMemory > 0 ? Math.floor(hcfg.cacheMemory / (hcfg.blobSize + 512)) : hcfg.keys;
    results.hitRate = {
      keys: hcfg.keys,
      blobSize: hcfg.blobSize,
      zipfS: hcfg.zipfS,
      cacheMemory: hcfg.cacheMemory,
      runs,
      median: median(runs.map((r) => r.hitRate)),
      idealBound: new Zipf(hcfg.keys, hcfg.zipfS).headMass(fits),
    };
    progress.log(`cache hit rate (Zipf s=${cfg.zipfS}): ${(results.hitRate.median * 100).toFixed(1)}%`);
  }

  const failoverCfg = {
    rounds: cfg.failoverRounds,
    writers: 4,
    readers: 4,
    steadyMs: quick ? 1500 : 3000,
    outageMs: quick ? 2000 : 4000,
    afterMs: quick ? 1500 : 3000,
    seed: cfg.seed,
    onOp,
    onPhase,
    log: (l: string) => progress.log(l),
  };
  if (t.kind === 'local' && (cfg.phases.has('leader') || cfg.phases.has('store'))) {
    progress.log('writing the read pool for the failover phases…');
    const pool = await preparePool(t, quick ? 60 : 200, 16 * 1024, cfg.seed);
    if (cfg.phases.has('leader')) {
      const lf = await leaderFailover(t, pool, failoverCfg);
      const firsts = lf.rounds.map((r) => r.firstWriteMs);
      results.leaderFailover = {
        ...lf,
        medianFirstWriteMs: median(firsts),
        maxFirstWriteMs: Math.max(...firsts),
      };
    }
    if (cfg.phases.has('store')) {
      const sf = await storeFailover(t, pool, { ...failoverCfg, readers: 8 });
      results.storeFailover = {
        ...sf,
        totalFailedReads: sf.rounds.reduce((a, r) => a + r.failedReads, 0),
        totalReads: sf.rounds.reduce((a, r) => a + r.failedReads + r.okReads, 0),
      };
    }
  } else if (cfg.phases.has('leader') || cfg.phases.has('store')) {
    progress.log('failover phases skipped: they kill processes, which only the local cluster allows');
  }

  progress.done();
  results.machine.loadAverageEnd = os.loadavg().map((x) => Math.round(x * 100) / 100);
  results.durationSeconds = (performance.now() - started) / 1000;
  const files = await writeResults(path.resolve(cfg.out), results, latencyGroups, histogram);
  process.stdout.write(
    `\n${markdown(results, { histograms: [] })}\nwrote ${files.json}, ${files.md} and ${files.svgs.join(', ')}\n`,
  );
} finally {
  progress.done();
  await target?.close();
}
