/**
 * Typed, validated configuration from environment variables. Each service has
 * one config module that declares its variables with these readers; every bad
 * value is collected and reported together, naming the variable, so the process
 * exits before it serves anything.
 */

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

export type Env = Readonly<Record<string, string | undefined>>;

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1024 ** 4,
  tib: 1024 ** 4,
};

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Reads variables from `env`, recording problems instead of throwing one at a time. */
export class EnvReader {
  private readonly problems: string[] = [];

  constructor(private readonly env: Env = process.env) {}

  private raw(name: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  }

  private fail<T>(name: string, value: string, expected: string, fallback: T): T {
    this.problems.push(`${name}=${JSON.stringify(value)}: expected ${expected}`);
    return fallback;
  }

  string(name: string, fallback: string): string {
    return this.raw(name) ?? fallback;
  }

  /**
   * A string that must match `pattern`; `describe` says what that means to a person.
   * `shown` is how a bad value appears in the error (a URL's password redacted).
   */
  matching(
    name: string,
    fallback: string,
    pattern: RegExp,
    describe: string,
    shown: (value: string) => string = (v) => v,
  ): string {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    return pattern.test(v) ? v : this.fail(name, shown(v), describe, fallback);
  }

  int(name: string, fallback: number, opts: { min?: number; max?: number } = {}): number {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    const min = opts.min ?? Number.MIN_SAFE_INTEGER;
    const max = opts.max ?? Number.MAX_SAFE_INTEGER;
    if (!/^-?\d+$/.test(v)) return this.fail(name, v, `an integer in [${min}, ${max}]`, fallback);
    const n = Number(v);
    if (n < min || n > max) return this.fail(name, v, `an integer in [${min}, ${max}]`, fallback);
    return n;
  }

  float(name: string, fallback: number, opts: { min?: number; max?: number } = {}): number {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    const min = opts.min ?? -Infinity;
    const max = opts.max ?? Infinity;
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) {
      return this.fail(name, v, `a number in [${min}, ${max}]`, fallback);
    }
    return n;
  }

  bool(name: string, fallback: boolean): boolean {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    if (/^(1|true|yes|on)$/i.test(v)) return true;
    if (/^(0|false|no|off)$/i.test(v)) return false;
    return this.fail(name, v, 'true or false', fallback);
  }

  /** Bytes: a plain number or a number with a unit (4GiB, 512MB, 64k). */
  size(name: string, fallback: number, opts: { min?: number; max?: number } = {}): number {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    const n = parseSize(v);
    const min = opts.min ?? 0;
    const max = opts.max ?? Number.MAX_SAFE_INTEGER;
    if (n === undefined || n < min || n > max) {
      return this.fail(
        name,
        v,
        `a size in bytes (e.g. 4GiB, 512MiB, 65536) between ${min} and ${max}`,
        fallback,
      );
    }
    return n;
  }

  /**
   * A duration in milliseconds. A bare number is read in `bareUnit` (the seed's
   * variables are in seconds: HEARTBEAT_INTERVAL=30); units ms, s, m, h are accepted.
   */
  duration(
    name: string,
    fallbackMs: number,
    opts: { bareUnit?: 'ms' | 's'; minMs?: number; maxMs?: number } = {},
  ): number {
    const v = this.raw(name);
    if (v === undefined) return fallbackMs;
    const ms = parseDuration(v, opts.bareUnit ?? 's');
    const min = opts.minMs ?? 0;
    const max = opts.maxMs ?? Number.MAX_SAFE_INTEGER;
    if (ms === undefined || ms < min || ms > max) {
      return this.fail(
        name,
        v,
        `a duration (e.g. 30, 1.5s, 500ms) between ${min} ms and ${max} ms`,
        fallbackMs,
      );
    }
    return ms;
  }

  /** host:port to listen on or connect to. */
  hostPort(name: string, fallback: string): string {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    return parseHostPort(v) ? v : this.fail(name, v, 'HOST:PORT with a port in [0, 65535]', fallback);
  }

  /** Adds a problem found by a cross-field check. */
  problem(message: string): void {
    this.problems.push(message);
  }

  /** Throws a ConfigError listing every problem, if any. */
  done(): void {
    if (this.problems.length > 0) throw new ConfigError([...this.problems]);
  }
}

export function parseSize(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  if (!m) return undefined;
  const unit = SIZE_UNITS[(m[2] ?? '').toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.floor(Number(m[1]) * unit);
}

export function parseDuration(text: string, bareUnit: 'ms' | 's'): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/i.exec(text.trim());
  if (!m) return undefined;
  const unit = DURATION_UNITS[(m[2] ?? bareUnit).toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.round(Number(m[1]) * unit);
}

export function parseHostPort(text: string): { host: string; port: number } | undefined {
  const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port > 65535) return undefined;
  return { host: (m[1] ?? '').replace(/^\[|\]$/g, ''), port };
}
