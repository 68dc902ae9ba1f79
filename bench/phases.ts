// The measured phases of the cluster benchmark: durable writes, reads on cache
// hits, reads on cache misses (per blob size), and the cache hit rate under a
// Zipf-distributed read workload.
import { createHash } from 'node:crypto';
import { treeCpuSeconds } from './cpu.js';
import { Load, type Sample, sleep, summarize } from './load.js';
import type { PhaseResult } from './stats.js';
import type { Target } from './target.js';
import { payload, Rng, sizeLabel, Zipf } from './workload.js';

export interface PhaseConfig {
  concurrency: number;
  durationMs: number;
  warmupMs: number;
  seed: number;
  onOp?: (s: Sample) => void;
  onPhase?: (name: string, totalMs: number) => void;
}

export interface MeasuredPhase {
  result: PhaseResult;
  /** Latencies of the successful measured operations (for the histogram). */
  latencies: number[];
  /** Share of the phase's reads that the gateways answered from the cache (reads only). */
  cacheHitShare?: number;
  /**
   * CPU milliseconds per successful operation, of the bench process and everything
   * it started (a local cluster's servers, Envoy, Redis), warm-up included: unlike
   * ops/s it does not depend on how much of the machine others use.
   */
  cpuMsPerOp?: number;
}

/** Runs a duration-bound load and summarises the operations that ended inside the measured window. */
async function measure(
  name: string,
  c: PhaseConfig,
  op: (w: number, i: number) => Promise<void>,
  kind: string,
): Promise<MeasuredPhase> {
  c.onPhase?.(name, c.warmupMs + c.durationMs);
  const load = new Load({
    kind,
    concurrency: c.concurrency,
    warmupMs: c.warmupMs,
    durationMs: c.durationMs,
    op,
    ...(c.onOp ? { onOp: c.onOp } : {}),
  });
  const cpu0 = treeCpuSeconds();
  const samples = await load.finished();
  const cpu = treeCpuSeconds() - cpu0;
  const okOps = samples.filter((s) => s.ok).length;
  const end = load.measureFrom + c.durationMs;
  const inWindow = samples.filter((s) => s.end <= end);
  const result = summarize(name, inWindow, c.durationMs / 1000);
  return {
    result,
    latencies: inWindow.filter((s) => s.ok).map((s) => s.end - s.start),
    ...(okOps > 0 ? { cpuMsPerOp: (cpu * 1000) / okOps } : {}),
  };
}

export interface SizeRun {
  size: number;
  write: MeasuredPhase;
  hit: MeasuredPhase;
  miss?: MeasuredPhase;
}

/**
 * One run for one size: writes (three replicas, durable: the gateway answers once
 * every replica has fsync'd and the directory committed), then reads of those
 * blobs on cache hits (every written blob is in the cache: writes fill it), then
 * on cache misses (the cache is emptied before each pass over the blobs, and each
 * pass reads each blob once, so no read can hit).
 */
export async function sizeRun(t: Target, size: number, run: number, c: PhaseConfig): Promise<SizeRun> {
  const label = sizeLabel(size);
  const rng = new Rng(c.seed).fork(size).fork(run);
  const base = rng.nextU32();
  const written: string[] = [];
  const write = await measure(
    `write ${label}`,
    c,
    async (_w, i) => {
      const data = payload(size, (base + i) >>> 0);
      const sha = createHash('sha256').update(data).digest('hex');
      const b = await t.client.upload(data, { sha256: sha, timeoutMs: 60_000 });
      written.push(b.id);
    },
    'write',
  );
  if (written.length === 0) throw new Error(`no ${label} write succeeded: ${JSON.stringify(write.result)}`);

  // Cache hits: uniform over what was just written (all of it cached by the writes).
  const hitRng = rng.fork(1);
  const before = await t.cacheCounts();
  const hit = await measure(
    `read ${label} (cache hit)`,
    c,
    async () => {
      const id = written[hitRng.int(written.length)] as string;
      await t.client.download(id, { timeoutMs: 30_000 });
    },
    'read',
  );
  const after = await t.cacheCounts();
  hit.cacheHitShare = share(before, after);

  let miss: MeasuredPhase | undefined;
  if (t.flushCache) {
    const flush = t.flushCache;
    const missRng = rng.fork(2);
    const feeder = new PassFeeder(written, missRng, flush);
    const b2 = await t.cacheCounts();
    miss = await measure(
      `read ${label} (cache miss)`,
      c,
      async () => {
        const id = await feeder.take();
        try {
          await t.client.download(id, { timeoutMs: 30_000 });
        } finally {
          feeder.done();
        }
      },
      'read',
    );
    const a2 = await t.cacheCounts();
    miss.cacheHitShare = share(b2, a2);
  }
  return { size, write, hit, ...(miss ? { miss } : {}) };
}

function share(a: { hits: number; misses: number }, b: { hits: number; misses: number }): number {
  const h = b.hits - a.hits;
  const m = b.misses - a.misses;
  return h + m > 0 ? h / (h + m) : Number.NaN;
}

/**
 * Hands out each id once per pass, in a shuffled order; between passes it waits
 * for the reads in flight to finish and empties the cache, so every read misses.
 */
class PassFeeder {
  private queue: string[] = [];
  private inflight = 0;
  private refilling: Promise<void> | undefined;

  constructor(
    private readonly ids: string[],
    private readonly rng: Rng,
    private readonly flush: () => Promise<void>,
  ) {}

  async take(): Promise<string> {
    while (this.queue.length === 0) {
      this.refilling ??= (async () => {
        while (this.inflight > 0) await sleep(1);
        await this.flush();
        const q = [...this.ids];
        for (let i = q.length - 1; i > 0; i--) {
          const j = this.rng.int(i + 1);
          [q[i], q[j]] = [q[j] as string, q[i] as string];
        }
        this.queue = q;
      })().finally(() => {
        this.refilling = undefined;
      });
      await this.refilling;
    }
    this.inflight++;
    return this.queue.pop() as string;
  }

  done(): void {
    this.inflight--;
  }
}

export interface HitRateConfig {
  keys: number;
  blobSize: number;
  zipfS: number;
  cacheMemory: number;
  warmupReads: number;
  measuredReads: number;
  concurrency: number;
  seed: number;
  onOp?: (s: Sample) => void;
  onPhase?: (name: string, totalOps: number) => void;
}

export interface HitRateRun {
  hitRate: number;
  reads: number;
  failed: number;
  opsPerSec: number;
}

/** Writes the key set for the Zipf workload once (ids returned in popularity-rank order). */
export async function prepareZipfKeys(t: Target, cfg: HitRateConfig): Promise<string[]> {
  cfg.onPhase?.(`zipf: writing ${cfg.keys} × ${sizeLabel(cfg.blobSize)}`, cfg.keys);
  const ids: string[] = new Array(cfg.keys);
  const base = new Rng(cfg.seed).fork(7).nextU32();
  let next = 0;
  await Promise.all(
    Array.from({ length: cfg.concurrency }, async () => {
      for (;;) {
        const k = next++;
        if (k >= cfg.keys) return;
        const start = performance.now();
        const b = await t.client.upload(payload(cfg.blobSize, (base + k) >>> 0), { timeoutMs: 60_000 });
        ids[k] = b.id;
        cfg.onOp?.({ kind: 'write', start, end: performance.now(), ok: true });
      }
    }),
  );
  return ids;
}

/**
 * Cache hit rate after warm-up: the cache is emptied and capped (LRU), a seeded
 * Zipf read workload warms it (not counted), then the measured reads' hits and
 * misses are counted at the gateways.
 */
export async function hitRateRun(
  t: Target,
  ids: string[],
  cfg: HitRateConfig,
  run: number,
): Promise<HitRateRun> {
  const zipf = new Zipf(ids.length, cfg.zipfS);
  const rng = new Rng(cfg.seed).fork(100 + run);
  await t.flushCache?.();
  if (cfg.cacheMemory > 0) await t.setCacheMemory?.(cfg.cacheMemory);
  const reads = (n: number, name: string) => {
    cfg.onPhase?.(name, n);
    return new Load({
      kind: 'read',
      concurrency: cfg.concurrency,
      maxOps: n,
      op: async () => {
        await t.client.download(ids[zipf.sample(rng)] as string, { timeoutMs: 30_000 });
      },
      ...(cfg.onOp ? { onOp: cfg.onOp } : {}),
    }).finished();
  };
  await reads(cfg.warmupReads, `zipf warm-up (run ${run})`);
  const before = await t.cacheCounts();
  const t0 = performance.now();
  const samples = await reads(cfg.measuredReads, `zipf measured (run ${run})`);
  const secs = (performance.now() - t0) / 1000;
  const after = await t.cacheCounts();
  await t.setCacheMemory?.(0);
  const h = after.hits - before.hits;
  const m = after.misses - before.misses;
  const ok = samples.filter((s) => s.ok).length;
  return {
    hitRate: h + m > 0 ? h / (h + m) : Number.NaN,
    reads: ok,
    failed: samples.length - ok,
    opsPerSec: ok / secs,
  };
}
