/** Latency percentiles and throughput of one benchmark phase. */
export interface PhaseResult {
  name: string;
  ops: number;
  errors: number;
  seconds: number;
  opsPerSec: number;
  p50ms: number;
  p95ms: number;
  p99ms: number;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

/**
 * Runs `op` from `concurrency` workers for `durationMs` (after `warmupMs` that is
 * not measured) and summarises the latencies.
 */
export async function runPhase(
  name: string,
  concurrency: number,
  durationMs: number,
  op: (worker: number, i: number) => Promise<void>,
  warmupMs = 500,
): Promise<PhaseResult> {
  const latencies: number[] = [];
  let errors = 0;
  let measuring = false;
  let stop = false;
  let counter = 0;
  const worker = async (w: number) => {
    while (!stop) {
      const t0 = performance.now();
      try {
        await op(w, counter++);
        if (measuring) latencies.push(performance.now() - t0);
      } catch {
        if (measuring) errors++;
      }
    }
  };
  const workers = Array.from({ length: concurrency }, (_, w) => worker(w));
  await new Promise((r) => setTimeout(r, warmupMs));
  measuring = true;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, durationMs));
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  stop = true;
  await Promise.all(workers);
  latencies.sort((a, b) => a - b);
  return {
    name,
    ops: latencies.length,
    errors,
    seconds,
    opsPerSec: latencies.length / seconds,
    p50ms: percentile(latencies, 50),
    p95ms: percentile(latencies, 95),
    p99ms: percentile(latencies, 99),
  };
}

export function table(rows: PhaseResult[]): string {
  const head = '| phase | ops/s | p50 ms | p95 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|';
  const body = rows
    .map(
      (r) =>
        `| ${r.name} | ${r.opsPerSec.toFixed(0)} | ${r.p50ms.toFixed(2)} | ${r.p95ms.toFixed(2)} | ${r.p99ms.toFixed(2)} | ${r.errors} |`,
    )
    .join('\n');
  return `${head}\n${body}`;
}
