// A closed-loop load generator that keeps every operation's outcome with its
// start and end time, so one run yields throughput, latency percentiles, a
// timeline (throughput over time across a failover) and a latency histogram.
import { type PhaseResult, percentile } from './stats.js';

export interface Sample {
  kind: string;
  /** performance.now() at start and end. */
  start: number;
  end: number;
  ok: boolean;
  /** gRPC code name or message of a failure. */
  error?: string;
}

export type Op = (worker: number, i: number) => Promise<void>;

export interface LoadOptions {
  kind: string;
  concurrency: number;
  op: Op;
  /** Stop after this long (ms) of measurement, after the warm-up. */
  durationMs?: number;
  /** Not measured: operations ending before warm-up is over are dropped. */
  warmupMs?: number;
  /** Stop after this many operations in total (warm-up included). */
  maxOps?: number;
  /** Called after each operation (progress displays). */
  onOp?: (s: Sample) => void;
}

const errName = (err: unknown): string => {
  const e = err as { codeName?: string; code?: unknown; message?: string };
  if (typeof e?.codeName === 'string') return e.codeName;
  return (e?.message ?? String(err)).slice(0, 120);
};

/**
 * A running load: workers loop over `op` until stop() (or the duration/count is
 * reached). `samples` holds every operation that ended after the warm-up.
 */
export class Load {
  readonly samples: Sample[] = [];
  readonly startedAt = performance.now();
  measureFrom: number;
  measureTo = Number.POSITIVE_INFINITY;
  private stopped = false;
  private started = 0;
  private readonly done: Promise<void>;

  constructor(o: LoadOptions) {
    this.measureFrom = this.startedAt + (o.warmupMs ?? 0);
    const worker = async (w: number) => {
      while (!this.stopped) {
        if (o.maxOps !== undefined && this.started >= o.maxOps) return;
        if (o.durationMs !== undefined && performance.now() >= this.measureFrom + o.durationMs) return;
        const i = this.started++;
        const start = performance.now();
        let s: Sample;
        try {
          await o.op(w, i);
          s = { kind: o.kind, start, end: performance.now(), ok: true };
        } catch (err) {
          s = { kind: o.kind, start, end: performance.now(), ok: false, error: errName(err) };
        }
        if (s.end >= this.measureFrom) this.samples.push(s);
        o.onOp?.(s);
      }
    };
    this.done = Promise.all(Array.from({ length: o.concurrency }, (_, w) => worker(w))).then(() => {
      this.measureTo = Math.min(this.measureTo, performance.now());
    });
  }

  /** Waits for the load to finish on its own (duration or count reached). */
  async finished(): Promise<Sample[]> {
    await this.done;
    return this.samples;
  }

  async stop(): Promise<Sample[]> {
    this.measureTo = performance.now();
    this.stopped = true;
    await this.done;
    return this.samples;
  }
}

export function runLoad(o: LoadOptions): Promise<Sample[]> {
  return new Load(o).finished();
}

/** Throughput and latency of the successful operations among `samples`. */
export function summarize(name: string, samples: Sample[], seconds?: number): PhaseResult {
  const ok = samples.filter((s) => s.ok);
  const lat = ok.map((s) => s.end - s.start).sort((a, b) => a - b);
  const span =
    seconds ??
    (samples.length > 0
      ? (Math.max(...samples.map((s) => s.end)) - Math.min(...samples.map((s) => s.start))) / 1000
      : 0);
  return {
    name,
    ops: ok.length,
    errors: samples.length - ok.length,
    seconds: span,
    opsPerSec: span > 0 ? ok.length / span : 0,
    p50ms: percentile(lat, 50),
    p95ms: percentile(lat, 95),
    p99ms: percentile(lat, 99),
  };
}

/** Successes and failures per bucket of `bucketMs`, from `from` (performance.now()) for `spanMs`. */
export function timeline(
  samples: Sample[],
  from: number,
  spanMs: number,
  bucketMs: number,
): Array<{ t: number; ok: number; failed: number }> {
  const n = Math.max(1, Math.ceil(spanMs / bucketMs));
  const out = Array.from({ length: n }, (_, i) => ({ t: (i * bucketMs) / 1000, ok: 0, failed: 0 }));
  for (const s of samples) {
    const b = Math.floor((s.end - from) / bucketMs);
    const slot = out[b];
    if (!slot) continue;
    if (s.ok) slot.ok++;
    else slot.failed++;
  }
  return out;
}

/** Counts of latencies (ms) in log-spaced buckets: bounds[i-1] < x <= bounds[i]. */
export function histogram(latenciesMs: number[]): Array<{ le: number; count: number }> {
  const bounds: number[] = [];
  for (let b = 0.25; b < 120_000; b *= 2 ** 0.5) bounds.push(Number(b.toPrecision(3)));
  const counts = bounds.map((le) => ({ le, count: 0 }));
  for (const x of latenciesMs) {
    let i = counts.findIndex((c) => x <= c.le);
    if (i < 0) i = counts.length - 1;
    (counts[i] as { count: number }).count++;
  }
  let first = counts.findIndex((c) => c.count > 0);
  let last = counts.length - 1 - [...counts].reverse().findIndex((c) => c.count > 0);
  if (first < 0) return [];
  first = Math.max(0, first - 1);
  last = Math.min(counts.length - 1, last + 1);
  return counts.slice(first, last + 1);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
