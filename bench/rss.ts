// Resident set size of server processes, sampled from /proc/<pid>/status (VmRSS)
// on a timer while a benchmark runs: peak and mean per process and per role
// (gateway, store, directory). Linux only; a process that has exited is skipped.
import { readFileSync } from 'node:fs';

/** One process to watch: its pid and the role it is reported under. */
export interface Watched {
  role: string;
  name: string;
  pid: number;
}

/** Peak and mean RSS of one role over the sampled period, in bytes. */
export interface RssFigure {
  role: string;
  processes: number;
  samples: number;
  /** Highest single-process RSS seen. */
  peakBytes: number;
  /** Mean over every sample of every process of the role. */
  meanBytes: number;
}

/** VmRSS of `pid` in bytes, or undefined when the process is gone. */
export function rssBytes(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Samples every `intervalMs` until stop(); figures() summarises per role. */
export class RssSampler {
  private readonly timer: NodeJS.Timeout;
  private readonly seen = new Map<string, { peak: number; sum: number; n: number; procs: Set<number> }>();
  /** Peak RSS per process name. */
  readonly peakByName = new Map<string, number>();

  constructor(
    private readonly watched: () => Watched[],
    intervalMs = 250,
  ) {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  private sample(): void {
    for (const w of this.watched()) {
      const rss = rssBytes(w.pid);
      if (rss === undefined) continue;
      let s = this.seen.get(w.role);
      if (!s) {
        s = { peak: 0, sum: 0, n: 0, procs: new Set() };
        this.seen.set(w.role, s);
      }
      s.peak = Math.max(s.peak, rss);
      s.sum += rss;
      s.n++;
      s.procs.add(w.pid);
      this.peakByName.set(w.name, Math.max(this.peakByName.get(w.name) ?? 0, rss));
    }
  }

  stop(): RssFigure[] {
    clearInterval(this.timer);
    this.sample();
    return [...this.seen.entries()].map(([role, s]) => ({
      role,
      processes: s.procs.size,
      samples: s.n,
      peakBytes: s.peak,
      meanBytes: s.n ? s.sum / s.n : Number.NaN,
    }));
  }
}

/** Merges the figures of several sampling periods (rounds) role by role. */
export function mergeRss(parts: RssFigure[][]): RssFigure[] {
  const by = new Map<string, RssFigure>();
  for (const f of parts.flat()) {
    const m = by.get(f.role);
    if (!m) {
      by.set(f.role, { ...f });
      continue;
    }
    const n = m.samples + f.samples;
    m.meanBytes = n ? (m.meanBytes * m.samples + f.meanBytes * f.samples) / n : Number.NaN;
    m.samples = n;
    m.peakBytes = Math.max(m.peakBytes, f.peakBytes);
    m.processes = Math.max(m.processes, f.processes);
  }
  return [...by.values()];
}

export const mib = (b: number): string => `${(b / (1024 * 1024)).toFixed(0)} MiB`;
