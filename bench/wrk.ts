// The neutral HTTP read: `wrk --latency` against one URL (the same tool for both
// systems), parsed into requests/s and latency percentiles. wrk is a C load
// generator (https://github.com/wg/wrk); its --latency report gives 50/75/90/99 %.
import { execFile, execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Installs wrk when it is missing (apt, via test/env/bootstrap.sh as `npm test` installs
 * its tools; a few stat calls when it is there) and puts test/env/bin first on PATH.
 * Throws when it cannot be installed.
 */
export function ensureWrk(): void {
  execFileSync('bash', [path.join(root, 'test/env/bootstrap.sh'), 'wrk'], { stdio: 'inherit' });
  const bin = path.join(root, 'test/env/bin');
  if (!process.env.PATH?.split(path.delimiter).includes(bin)) {
    process.env.PATH = `${bin}${path.delimiter}${process.env.PATH ?? ''}`;
  }
}

export interface WrkResult {
  opsPerSec: number;
  p50ms: number;
  p99ms: number;
  requests: number;
  /** Non-2xx/3xx responses plus socket errors. */
  errors: number;
}

/** Parses wrk's --latency output (units us, ms, s, m). */
export function parseWrk(out: string): WrkResult {
  const unit: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000 };
  const pct = (p: string): number => {
    const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out);
    return m ? Number(m[1]) * (unit[m[2] as string] as number) : Number.NaN;
  };
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    opsPerSec: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? Number.NaN),
    p50ms: pct('50'),
    p99ms: pct('99'),
    requests: Number(/(\d+) requests in/.exec(out)?.[1] ?? 0),
    errors: non2xx + (sock ? sock.slice(1).reduce((a, x) => a + Number(x), 0) : 0),
  };
}

/**
 * `wrk -t<threads> -c<connections> -d<seconds>s --latency <url>`; bounded by a
 * timeout of the duration plus 30 s. When more than 1 % of requests failed (or none
 * was made) the figures are NaN, the counts kept: a failed figure, not an aborted run.
 */
export function wrk(
  url: string,
  o: { threads: number; connections: number; seconds: number; headers?: Record<string, string> },
): Promise<WrkResult> {
  const headers = Object.entries(o.headers ?? {}).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  const args = [`-t${o.threads}`, `-c${o.connections}`, `-d${o.seconds}s`, '--latency', ...headers, url];
  return new Promise((resolve, reject) => {
    execFile('wrk', args, { timeout: (o.seconds + 30) * 1000 }, (err, stdout) => {
      if (err) return reject(new Error(`wrk ${args.join(' ')}: ${err.message}`));
      const r = parseWrk(String(stdout));
      if (r.requests === 0 || r.errors > 0.01 * r.requests) {
        return resolve({ ...r, opsPerSec: Number.NaN, p50ms: Number.NaN, p99ms: Number.NaN });
      }
      resolve(r);
    });
  });
}
