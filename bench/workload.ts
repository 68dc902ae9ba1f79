// Deterministic workloads for the benchmarks and the fault suite: a seeded PRNG,
// a Zipf sampler and reproducible payloads. Same seed, same sequence of ids,
// sizes and bytes on every run and every machine.

/** mulberry32: a small, fast, seeded 32-bit PRNG. next() is uniform in [0, 1). */
export class Rng {
  private s: number;

  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }

  nextU32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  next(): number {
    return this.nextU32() / 4294967296;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** A child generator whose sequence depends only on this seed and `stream`. */
  fork(stream: number): Rng {
    return new Rng((this.nextU32() ^ Math.imul(stream + 1, 0x85ebca6b)) >>> 0);
  }
}

/**
 * Zipf over ranks 0..n-1 with exponent s: P(k) ∝ 1/(k+1)^s. Sampling by binary
 * search over the cumulative distribution (exact, O(log n) per draw).
 */
export class Zipf {
  private readonly cdf: Float64Array;

  constructor(
    readonly n: number,
    readonly s: number,
  ) {
    if (!Number.isInteger(n) || n < 1) throw new Error(`Zipf needs n >= 1, got ${n}`);
    this.cdf = new Float64Array(n);
    let sum = 0;
    for (let k = 0; k < n; k++) {
      sum += 1 / (k + 1) ** s;
      this.cdf[k] = sum;
    }
    for (let k = 0; k < n; k++) this.cdf[k] = (this.cdf[k] as number) / sum;
  }

  sample(rng: Rng): number {
    const u = rng.next();
    let lo = 0;
    let hi = this.n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.cdf[mid] as number) < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Probability mass of the `k` most popular ranks (what an ideal cache of k entries would hit). */
  headMass(k: number): number {
    if (k <= 0) return 0;
    return this.cdf[Math.min(this.n, k) - 1] as number;
  }
}

/**
 * `n` pseudo-random bytes determined by (seed, n); unique content per seed so
 * content-addressed ids differ. xorshift32 over 32-bit words (fast enough for MiBs).
 */
export function payload(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = (seed ^ 0x2545f491) >>> 0 || 1;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b.writeUInt32LE(x, i);
  }
  for (; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  // The seed in the first bytes: two seeds never collide even if their streams would.
  if (n >= 8) b.writeUInt32LE(seed >>> 0, 0);
  return b;
}

/** Human size: 1024 → "1KiB". */
export function sizeLabel(n: number): string {
  if (n >= 1024 * 1024 && n % (1024 * 1024) === 0) return `${n / (1024 * 1024)}MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024}KiB`;
  return `${n}B`;
}

/** Parses "1KiB,64KiB,1MiB" (or bare byte counts). */
export function parseSizes(text: string): number[] {
  return text.split(',').map((t) => {
    const m = /^\s*(\d+)\s*(B|KiB|MiB|KB|MB|k|m)?\s*$/i.exec(t);
    if (!m) throw new Error(`bad size ${JSON.stringify(t)} (use e.g. 1KiB, 64KiB, 1MiB)`);
    const unit = (m[2] ?? 'B').toLowerCase();
    const mult = unit.startsWith('m') ? 1024 * 1024 : unit.startsWith('k') ? 1024 : 1;
    return Number(m[1]) * mult;
  });
}

export function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}
