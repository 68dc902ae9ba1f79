/**
 * Per-blob access heat: an exponentially weighted moving average of reads per
 * minute, kept per reporter (store or gateway) and summed. Pure: every call takes
 * the current time, so tests drive it with any clock.
 *
 * The average runs in continuous time: a count c over an interval I is a sample of
 * c·60 000/I reads per minute, weighted 1 − (1 − α)^(I/P) (α per period P, the
 * seed's α = 0.3 per minute); between reports the rate decays by (1 − α)^(Δt/P),
 * since a blob left out of a report had no reads. The result does not depend on
 * how often reporters send.
 *
 * Memory stays bounded: an entry not refreshed for the staleness threshold is
 * dropped (a silent reporter's entries all go), rates decayed below a floor are
 * dropped, and beyond `maxTrackedBlobs` the coldest blobs are evicted.
 */
export interface HeatOptions {
  /** Weight of one period's sample. */
  alpha: number;
  /** Period α refers to, ms. */
  periodMs: number;
  /** An entry older than this is dropped. */
  stalenessMs: number;
  /** Hard cap on tracked blobs. */
  maxTrackedBlobs: number;
  /** Rates below this (per minute) count as zero and are dropped (default 0.01). */
  floorPerMinute?: number;
}

interface Entry {
  /** Reads per minute as of `at`. */
  rate: number;
  /** When the rate was last updated (ms). */
  at: number;
}

export interface ReporterRate {
  reporterId: string;
  ratePerMinute: number;
}

export class HeatTracker {
  private readonly blobs = new Map<string, Map<string, Entry>>();
  private readonly lastReport = new Map<string, number>();
  private readonly floor: number;
  /** Blobs evicted to respect the cap, since start. */
  evicted = 0;

  constructor(private readonly opts: HeatOptions) {
    this.floor = opts.floorPerMinute ?? 0.01;
  }

  get size(): number {
    return this.blobs.size;
  }

  private decay(entry: Entry, now: number): number {
    const dt = Math.max(0, now - entry.at);
    if (dt > this.opts.stalenessMs) return 0;
    return entry.rate * (1 - this.opts.alpha) ** (dt / this.opts.periodMs);
  }

  /**
   * Applies one report: `counts` reads per blob over the `intervalMs` ending now.
   * Returns the blobs whose rate changed.
   */
  record(
    reporterId: string,
    intervalMs: number,
    counts: Iterable<readonly [string, number]>,
    now: number,
  ): string[] {
    const interval = Math.max(1, intervalMs);
    const w = 1 - (1 - this.opts.alpha) ** (interval / this.opts.periodMs);
    this.lastReport.set(reporterId, now);
    const touched: string[] = [];
    for (const [blobId, count] of counts) {
      if (!(count > 0)) continue;
      const sample = (count * 60_000) / interval;
      let per = this.blobs.get(blobId);
      if (!per) {
        per = new Map();
        this.blobs.set(blobId, per);
      }
      const prev = per.get(reporterId);
      // Decay over the silent gap before this interval, then blend in the sample.
      const before = prev ? this.decay(prev, now - interval) : 0;
      per.set(reporterId, { rate: (1 - w) * before + w * sample, at: now });
      touched.push(blobId);
    }
    if (this.blobs.size > this.opts.maxTrackedBlobs) this.evictColdest(now);
    return touched;
  }

  /** Sum of the reporters' rates for a blob (reads per minute). */
  rate(blobId: string, now: number): number {
    const per = this.blobs.get(blobId);
    if (!per) return 0;
    let sum = 0;
    for (const e of per.values()) sum += this.decay(e, now);
    return sum;
  }

  /** Rate per reporter, highest first. */
  heat(blobId: string, now: number): ReporterRate[] {
    const per = this.blobs.get(blobId);
    if (!per) return [];
    return [...per]
      .map(([reporterId, e]) => ({ reporterId, ratePerMinute: this.decay(e, now) }))
      .filter((r) => r.ratePerMinute > 0)
      .sort((a, b) => b.ratePerMinute - a.ratePerMinute);
  }

  /** Tracked blob ids. */
  blobIds(): IterableIterator<string> {
    return this.blobs.keys();
  }

  /** The `n` hottest blobs with at least `minRate` reads/min (default: every tracked one). */
  hottest(n: number, now: number, minRate = this.floor): { blobId: string; ratePerMinute: number }[] {
    const all: { blobId: string; ratePerMinute: number }[] = [];
    for (const id of this.blobs.keys()) {
      const r = this.rate(id, now);
      if (r >= minRate) all.push({ blobId: id, ratePerMinute: r });
    }
    return all
      .sort((a, b) => b.ratePerMinute - a.ratePerMinute || (a.blobId < b.blobId ? -1 : 1))
      .slice(0, n);
  }

  /** Reporters heard from within the staleness threshold. */
  liveReporters(now: number): string[] {
    return [...this.lastReport].filter(([, at]) => now - at <= this.opts.stalenessMs).map(([id]) => id);
  }

  /** Drops stale and negligible entries; returns the blob ids that were dropped entirely. */
  sweep(now: number): string[] {
    const dropped: string[] = [];
    for (const [blobId, per] of this.blobs) {
      for (const [reporter, e] of per) {
        if (this.decay(e, now) < this.floor) per.delete(reporter);
      }
      if (per.size === 0) {
        this.blobs.delete(blobId);
        dropped.push(blobId);
      }
    }
    for (const [reporter, at] of this.lastReport) {
      if (now - at > this.opts.stalenessMs) this.lastReport.delete(reporter);
    }
    return dropped;
  }

  /** Forgets a blob (deleted). */
  forget(blobId: string): void {
    this.blobs.delete(blobId);
  }

  /**
   * Evicts the coldest blobs down to 75% of the cap: one pass computing rates into
   * a typed array, a numeric sort of a copy to find the cutoff, one pass deleting.
   * It runs once per quarter of the cap in new blobs (amortised O(log n) each).
   */
  private evictColdest(now: number): void {
    const keep = Math.floor(this.opts.maxTrackedBlobs * 0.75);
    const excess = this.blobs.size - keep;
    if (excess <= 0) return;
    const ids: string[] = [];
    const rates = new Float64Array(this.blobs.size);
    let i = 0;
    for (const id of this.blobs.keys()) {
      ids.push(id);
      rates[i++] = this.rate(id, now);
    }
    const cutoff = Float64Array.from(rates).sort()[excess - 1] as number;
    let removed = 0;
    // Strictly colder than the cutoff first, then ties at the cutoff as needed.
    for (const tie of [false, true]) {
      for (let j = 0; j < ids.length && removed < excess; j++) {
        const r = rates[j] as number;
        if (tie ? r === cutoff : r < cutoff) {
          if (this.blobs.delete(ids[j] as string)) removed++;
        }
      }
    }
    this.evicted += removed;
  }
}
