// Results of `npm run bench`: bench/results/<stamp>.json, a Markdown report and
// two SVG charts, plus the seed's published figures next to ours.
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { FailoverResult, FailoverRound } from './failover.js';
import type { HitRateRun } from './phases.js';
import type { PhaseResult } from './stats.js';
import { histogramChart, timelineChart } from './svg.js';
import { median, sizeLabel } from './workload.js';

/** The seed README's published figures (../shared/seed-reference.md). */
export const SEED = {
  writesPerSec: '100–200',
  readsPerSecHit: '1000+',
  readsPerSecMiss: '200–300',
  failover: '< 10 s',
  hitRate: '70–90%',
};

export interface MedianPhase {
  name: string;
  runs: PhaseResult[];
  opsPerSec: number;
  p50ms: number;
  p95ms: number;
  p99ms: number;
  errors: number;
  /** Share of reads the gateways served from the cache (median over runs). */
  cacheHitShare?: number;
}

export function medianPhase(name: string, runs: PhaseResult[], shares?: number[]): MedianPhase {
  return {
    name,
    runs,
    opsPerSec: median(runs.map((r) => r.opsPerSec)),
    p50ms: median(runs.map((r) => r.p50ms)),
    p95ms: median(runs.map((r) => r.p95ms)),
    p99ms: median(runs.map((r) => r.p99ms)),
    errors: runs.reduce((a, r) => a + r.errors, 0),
    ...(shares ? { cacheHitShare: median(shares) } : {}),
  };
}

export interface SizeFigures {
  size: number;
  write: MedianPhase;
  hit: MedianPhase;
  miss?: MedianPhase;
}

export interface BenchResults {
  date: string;
  command: string;
  machine: {
    cpus: number;
    cpuModel: string;
    memoryGiB: number;
    os: string;
    node: string;
    loadAverageStart: number[];
    loadAverageEnd: number[];
  };
  target: string;
  settings: Record<string, string>;
  config: Record<string, unknown>;
  throughput: SizeFigures[];
  hitRate?: {
    keys: number;
    blobSize: number;
    zipfS: number;
    cacheMemory: number;
    runs: HitRateRun[];
    median: number;
    /** Hit rate of an ideal cache holding the most popular keys that fit in its memory (context). */
    idealBound: number;
  };
  leaderFailover?: FailoverResult & { medianFirstWriteMs: number; maxFirstWriteMs: number };
  storeFailover?: FailoverResult & { totalFailedReads: number; totalReads: number };
  durationSeconds: number;
}

export function machine(): Omit<BenchResults['machine'], 'loadAverageEnd'> {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round(os.totalmem() / 1024 ** 3),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    loadAverageStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

const n0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : '–');
const n1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '–');
const pct = (x: number | undefined) =>
  x !== undefined && Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : '–';
const lat = (p: MedianPhase | undefined) => (p ? `${n1(p.p50ms)} / ${n1(p.p95ms)} / ${n1(p.p99ms)}` : '–');
const secs = (ms: number) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : '–');

function failoverRows(rounds: FailoverRound[]): string[] {
  return [
    '| round | killed | first write after | first read after | failed writes | failed reads | ok writes | ok reads | longest write | longest read | errors |',
    '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|',
    ...rounds.map(
      (r) =>
        `| ${r.round} | ${r.killed} | ${secs(r.firstWriteMs)} | ${secs(r.firstReadMs)} | ${r.failedWrites} | ${r.failedReads} | ${r.okWrites} | ${r.okReads} | ${secs(r.maxWriteMs)} | ${secs(r.maxReadMs)} | ${
          Object.entries(r.errors)
            .map(([k, v]) => `${k} ×${v}`)
            .join(', ') || '–'
        } |`,
    ),
  ];
}

export function markdown(
  r: BenchResults,
  files: { timeline?: string; storeTimeline?: string; histograms: string[] },
): string {
  const c = r.config;
  const out: string[] = [
    `# Haystack cluster benchmark — ${r.date}`,
    '',
    `Command: \`${r.command}\``,
    '',
    `Machine: ${r.machine.cpus} × ${r.machine.cpuModel}, ${r.machine.memoryGiB} GiB, ${r.machine.os}, Node ${r.machine.node}; ` +
      `load average ${r.machine.loadAverageStart.join(' ')} at the start, ${r.machine.loadAverageEnd.join(' ')} at the end. ` +
      `Target: ${r.target}. Took ${n0(r.durationSeconds)} s.`,
    '',
    `Workload: seed ${c.seed}, concurrency ${c.concurrency}, ${c.runs} runs per figure (median), ` +
      `${c.warmupMs} ms warm-up (not measured) + ${c.durationMs} ms measured per phase. Writes: fresh content, ` +
      `three replicas, acknowledged once durable on all of them and committed. Every operation goes through Envoy with the SDK.`,
    '',
    '## Seed figures next to ours',
    '',
    '| figure | seed (published) | Haystack (this run) |',
    '|---|---|---|',
  ];
  const sizes = r.throughput;
  const per = (f: (s: SizeFigures) => MedianPhase | undefined) =>
    sizes.map((s) => `${sizeLabel(s.size)}: ${n0(f(s)?.opsPerSec ?? Number.NaN)}`).join(', ');
  out.push(`| writes/s (3 replicas, durable) | ${SEED.writesPerSec} | ${per((s) => s.write)} |`);
  out.push(`| reads/s, cache hits | ${SEED.readsPerSecHit} | ${per((s) => s.hit)} |`);
  out.push(`| reads/s, cache misses | ${SEED.readsPerSecMiss} | ${per((s) => s.miss)} |`);
  if (r.leaderFailover) {
    out.push(
      `| failover (leader kill -9 → first successful write) | ${SEED.failover} | median ${secs(r.leaderFailover.medianFirstWriteMs)}, max ${secs(r.leaderFailover.maxFirstWriteMs)} |`,
    );
  }
  if (r.hitRate)
    out.push(
      `| cache hit rate after warm-up | ${SEED.hitRate} | ${pct(r.hitRate.median)} (Zipf s=${r.hitRate.zipfS}) |`,
    );
  out.push(
    '',
    '## Throughput and latency (median of runs)',
    '',
    '| size | writes/s | write p50 / p95 / p99 ms | reads/s (hit) | hit p50 / p95 / p99 ms | reads/s (miss) | miss p50 / p95 / p99 ms | failed ops |',
    '|---|---:|---|---:|---|---:|---|---:|',
    ...sizes.map(
      (s) =>
        `| ${sizeLabel(s.size)} | ${n0(s.write.opsPerSec)} | ${lat(s.write)} | ${n0(s.hit.opsPerSec)} | ${lat(s.hit)} | ${n0(s.miss?.opsPerSec ?? Number.NaN)} | ${lat(s.miss)} | ${s.write.errors + s.hit.errors + (s.miss?.errors ?? 0)} |`,
    ),
    '',
    `Served from the cache in the hit phases: ${sizes.map((s) => `${sizeLabel(s.size)} ${pct(s.hit.cacheHitShare)}`).join(', ')}; ` +
      `in the miss phases: ${sizes.map((s) => `${sizeLabel(s.size)} ${pct(s.miss?.cacheHitShare)}`).join(', ')}.`,
  );
  if (r.hitRate) {
    const h = r.hitRate;
    out.push(
      '',
      '## Cache hit rate (Zipf)',
      '',
      `${h.keys} blobs of ${sizeLabel(h.blobSize)}, reads drawn from Zipf(s=${h.zipfS}); the cache Redis capped at ${sizeLabel(h.cacheMemory)} ` +
        `(allkeys-lru, as deployed, scaled down so the working set does not fit); cache emptied, then ${c.zipfWarmupReads} reads of warm-up, ` +
        `then ${c.zipfReads} measured reads, counted at the gateways.`,
      '',
      '| run | hit rate | reads/s | failed |',
      '|---:|---:|---:|---:|',
      ...h.runs.map((x, i) => `| ${i + 1} | ${pct(x.hitRate)} | ${n0(x.opsPerSec)} | ${x.failed} |`),
      '',
      `Median ${pct(h.median)}; an ideal cache holding the most popular blobs that fit would hit ${pct(h.idealBound)}.`,
    );
  }
  if (r.leaderFailover) {
    out.push(
      '',
      '## Leader failover (kill -9 the leader directory under load)',
      '',
      'Writers upload fresh 4 KiB blobs and readers download, through Envoy with the SDK (its default retries).',
      '"First write after" is measured from the kill to the end of the first write *issued after* it that succeeded.',
      '',
      ...failoverRows(r.leaderFailover.rounds),
    );
  }
  if (r.storeFailover) {
    out.push(
      '',
      '## Store failover (kill -9 a store under a read load of cache misses)',
      '',
      `${r.storeFailover.totalFailedReads} of ${r.storeFailover.totalReads} reads after the kills failed.`,
      '',
      ...failoverRows(r.storeFailover.rounds),
    );
  }
  if (files.timeline || files.histograms.length > 0) {
    out.push('', '## Charts', '');
    if (files.timeline) out.push(`![throughput across a leader failover](${files.timeline})`, '');
    if (files.storeTimeline) out.push(`![reads across a store failover](${files.storeTimeline})`, '');
    for (const h of files.histograms) out.push(`![latency histogram](${h})`, '');
  }
  out.push('', '## Settings', '', ...Object.entries(r.settings).map(([k, v]) => `- ${k}: ${v}`), '');
  return out.join('\n');
}

export async function writeResults(
  dir: string,
  r: BenchResults,
  latencies: Array<{ label: string; series: Array<{ name: string; latencies: number[] }> }>,
  histogram: (xs: number[]) => Array<{ le: number; count: number }>,
): Promise<{ json: string; md: string; svgs: string[] }> {
  await mkdir(dir, { recursive: true });
  const stamp = r.date.replace(/:/g, '-').replace(/\.\d+Z$/, 'Z');
  const svgs: string[] = [];
  const files: { timeline?: string; storeTimeline?: string; histograms: string[] } = { histograms: [] };
  const tl = r.leaderFailover?.timeline;
  if (tl) {
    const name = `${stamp}-failover.svg`;
    const series = [
      { name: 'writes', points: tl.writes },
      { name: 'reads', points: tl.reads },
    ];
    const st = r.storeFailover?.timeline;
    await writeFile(
      path.join(dir, name),
      timelineChart({
        title: 'Throughput across a leader failover (kill -9 the leader directory)',
        bucketMs: tl.bucketMs,
        series,
        markers: tl.markers,
      }),
    );
    svgs.push(name);
    files.timeline = name;
    if (st) {
      const sname = `${stamp}-store-failover.svg`;
      await writeFile(
        path.join(dir, sname),
        timelineChart({
          title: 'Reads (cache misses) across a store failover (kill -9 a store)',
          bucketMs: st.bucketMs,
          series: [{ name: 'reads', points: st.reads }],
          markers: st.markers,
        }),
      );
      svgs.push(sname);
      files.storeTimeline = sname;
    }
  }
  for (const g of latencies) {
    const name = `${stamp}-latency-${g.label}.svg`;
    await writeFile(
      path.join(dir, name),
      histogramChart({
        title: `Latency histogram, ${g.label} blobs (all runs)`,
        series: g.series.map((l) => ({ name: l.name, buckets: histogram(l.latencies) })),
      }),
    );
    svgs.push(name);
    files.histograms.push(name);
  }
  const json = path.join(dir, `${stamp}.json`);
  await writeFile(json, `${JSON.stringify(r, null, 2)}\n`);
  const md = path.join(dir, `${stamp}.md`);
  await writeFile(md, markdown(r, files));
  return { json, md, svgs };
}
