// Failover under load on the local cluster: kill -9 the leader directory while
// writes and reads run (time to the first successful write, failed requests),
// and kill -9 a store under a read load of cache misses (failed reads).
import { createHash } from 'node:crypto';
import { Load, type Sample, sleep, timeline } from './load.js';
import type { Target } from './target.js';
import { payload, Rng } from './workload.js';

export interface FailoverRound {
  round: number;
  killed: string;
  /** kill -9 → end of the first write that started after the kill and succeeded (ms). */
  firstWriteMs: number;
  /** kill -9 → end of the first read that started after the kill and succeeded (ms). */
  firstReadMs: number;
  failedWrites: number;
  failedReads: number;
  okWrites: number;
  okReads: number;
  /** Longest write latency among writes in flight at or started after the kill (ms). */
  maxWriteMs: number;
  maxReadMs: number;
  errors: Record<string, number>;
}

export interface FailoverResult {
  rounds: FailoverRound[];
  /** Timeline of the first round (bucketed) for the chart. */
  timeline: {
    bucketMs: number;
    writes: Array<{ t: number; ok: number; failed: number }>;
    reads: Array<{ t: number; ok: number; failed: number }>;
    markers: Array<{ t: number; label: string }>;
  };
}

const BUCKET_MS = 250;

function tally(samples: Sample[], since: number) {
  const after = samples.filter((s) => s.end >= since);
  const w = after.filter((s) => s.kind === 'write');
  const r = after.filter((s) => s.kind === 'read');
  const first = (xs: Sample[]) => {
    const ends = xs.filter((s) => s.ok && s.start >= since).map((s) => s.end);
    return ends.length ? Math.min(...ends) - since : Number.NaN;
  };
  const errors: Record<string, number> = {};
  for (const s of after) if (!s.ok) errors[s.error ?? '?'] = (errors[s.error ?? '?'] ?? 0) + 1;
  const maxLat = (xs: Sample[]) => Math.max(0, ...xs.map((s) => s.end - s.start));
  return {
    firstWriteMs: first(w),
    firstReadMs: first(r),
    failedWrites: w.filter((s) => !s.ok).length,
    failedReads: r.filter((s) => !s.ok).length,
    okWrites: w.filter((s) => s.ok).length,
    okReads: r.filter((s) => s.ok).length,
    maxWriteMs: maxLat(w),
    maxReadMs: maxLat(r),
    errors,
  };
}

/** Blobs for the read side of the failover loads. */
export async function preparePool(t: Target, n: number, size: number, seed: number): Promise<string[]> {
  const base = new Rng(seed).fork(991).nextU32();
  const ids: string[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (;;) {
        const k = next++;
        if (k >= n) return;
        ids.push((await t.client.upload(payload(size, (base + k) >>> 0), { timeoutMs: 60_000 })).id);
      }
    }),
  );
  return ids;
}

export interface FailoverConfig {
  rounds: number;
  writers: number;
  readers: number;
  /** Load before the kill (ms). */
  steadyMs: number;
  /** How long the killed process stays dead (at least until the first write after the kill). */
  outageMs: number;
  /** Load after the restart (ms). */
  afterMs: number;
  seed: number;
  onOp?: (s: Sample) => void;
  onPhase?: (name: string, totalMs: number) => void;
  log?: (line: string) => void;
}

/**
 * kill -9 the leader directory under a write + read load, `rounds` times. Writes
 * are 4 KiB uploads of fresh content through Envoy (SDK with its default retries:
 * what an application sees); reads cycle through a pool of blobs.
 */
export async function leaderFailover(
  t: Target,
  pool: string[],
  cfg: FailoverConfig,
): Promise<FailoverResult> {
  const cluster = t.cluster;
  if (!cluster) throw new Error('leader failover needs the local cluster');
  const rounds: FailoverRound[] = [];
  let tl: FailoverResult['timeline'] | undefined;
  const base = new Rng(cfg.seed).fork(31).nextU32();
  let seq = 0;
  for (let round = 1; round <= cfg.rounds; round++) {
    cfg.onPhase?.(`leader failover round ${round}`, cfg.steadyMs + cfg.outageMs + cfg.afterMs);
    await cluster.waitReady(60_000);
    const leader = await cluster.leaderIndex();
    const writes = new Load({
      kind: 'write',
      concurrency: cfg.writers,
      op: async () => {
        const data = payload(4096, (base + seq++) >>> 0);
        await t.client.upload(data, {
          sha256: createHash('sha256').update(data).digest('hex'),
          timeoutMs: 30_000,
        });
      },
      ...(cfg.onOp ? { onOp: cfg.onOp } : {}),
    });
    let r = 0;
    const reads = new Load({
      kind: 'read',
      concurrency: cfg.readers,
      op: async () => {
        await t.client.download(pool[r++ % pool.length] as string, { timeoutMs: 30_000 });
      },
      ...(cfg.onOp ? { onOp: cfg.onOp } : {}),
    });
    const t0 = performance.now();
    await sleep(cfg.steadyMs);
    await cluster.directories[leader]?.kill();
    const killedAt = performance.now();
    // Stay down at least outageMs, and until a write issued after the kill succeeded.
    const deadline = killedAt + 60_000;
    while (performance.now() < deadline) {
      const since = performance.now() - killedAt;
      const wrote = writes.samples.some((s) => s.ok && s.start >= killedAt);
      if (since >= cfg.outageMs && wrote) break;
      await sleep(50);
    }
    await cluster.startDirectory(leader);
    const restartedAt = performance.now();
    await sleep(cfg.afterMs);
    const all = [...(await writes.stop()), ...(await reads.stop())];
    const stats = tally(all, killedAt);
    const row: FailoverRound = { round, killed: `directory-${leader} (leader)`, ...stats };
    rounds.push(row);
    cfg.log?.(
      `leader failover ${round}: first write after ${stats.firstWriteMs.toFixed(0)} ms, ${stats.failedWrites} writes and ${stats.failedReads} reads failed`,
    );
    if (!tl) {
      const span = performance.now() - t0;
      tl = {
        bucketMs: BUCKET_MS,
        writes: timeline(
          all.filter((s) => s.kind === 'write'),
          t0,
          span,
          BUCKET_MS,
        ),
        reads: timeline(
          all.filter((s) => s.kind === 'read'),
          t0,
          span,
          BUCKET_MS,
        ),
        markers: [
          { t: (killedAt - t0) / 1000, label: `kill -9 directory-${leader} (leader)` },
          { t: (restartedAt - t0) / 1000, label: `directory-${leader} restarted` },
        ],
      };
    }
    await sleep(1000);
  }
  return { rounds, timeline: tl as FailoverResult['timeline'] };
}

/**
 * kill -9 a store under a read load of cache misses (the cache is emptied before
 * each pass over the pool, each pass reads each blob once): every read goes to a
 * store, so the gateways must fail over to another replica.
 */
export async function storeFailover(t: Target, pool: string[], cfg: FailoverConfig): Promise<FailoverResult> {
  const cluster = t.cluster;
  const flush = t.flushCache;
  if (!cluster || !flush) throw new Error('store failover needs the local cluster');
  const rounds: FailoverRound[] = [];
  let tl: FailoverResult['timeline'] | undefined;
  const rng = new Rng(cfg.seed).fork(57);
  for (let round = 1; round <= cfg.rounds; round++) {
    cfg.onPhase?.(`store failover round ${round}`, cfg.steadyMs + cfg.outageMs + cfg.afterMs);
    await cluster.waitReady(120_000);
    const victim = (round - 1) % cluster.stores.length;
    let queue: string[] = [];
    let inflight = 0;
    let refill: Promise<void> | undefined;
    const take = async () => {
      while (queue.length === 0) {
        refill ??= (async () => {
          while (inflight > 0) await sleep(1);
          await flush();
          queue = [...pool].sort(() => rng.next() - 0.5);
        })().finally(() => {
          refill = undefined;
        });
        await refill;
      }
      inflight++;
      return queue.pop() as string;
    };
    const reads = new Load({
      kind: 'read',
      concurrency: cfg.readers,
      op: async () => {
        const id = await take();
        try {
          await t.client.download(id, { timeoutMs: 30_000 });
        } finally {
          inflight--;
        }
      },
      ...(cfg.onOp ? { onOp: cfg.onOp } : {}),
    });
    const t0 = performance.now();
    await sleep(cfg.steadyMs);
    await cluster.stores[victim]?.kill();
    const killedAt = performance.now();
    await sleep(cfg.outageMs);
    await cluster.startStore(victim);
    const restartedAt = performance.now();
    await sleep(cfg.afterMs);
    const all = await reads.stop();
    const stats = tally(all, killedAt);
    rounds.push({ round, killed: `store-${victim}`, ...stats });
    cfg.log?.(
      `store failover ${round}: store-${victim} killed, ${stats.failedReads} of ${stats.failedReads + stats.okReads} reads failed`,
    );
    if (!tl) {
      const span = performance.now() - t0;
      tl = {
        bucketMs: BUCKET_MS,
        writes: [],
        reads: timeline(all, t0, span, BUCKET_MS),
        markers: [
          { t: (killedAt - t0) / 1000, label: `kill -9 store-${victim}` },
          { t: (restartedAt - t0) / 1000, label: `store-${victim} restarted` },
        ],
      };
    }
  }
  return { rounds, timeline: tl as FailoverResult['timeline'] };
}
