/**
 * The seam between leader election and the thing that holds leases. A lease is a
 * key with a time-to-live and a holder; winning it also yields a fencing term that
 * is strictly greater than every term handed out before (and than `minTerm`).
 * Renewal and release are compare-and-set on (holder, term): only the holder can
 * extend or drop its own lease.
 */
export interface LeaseInfo {
  /** Opaque holder string (the directory uses "<id>|<host:port>"). */
  holder: string;
  /** Fencing term taken when the lease was won. */
  term: bigint;
}

export type AcquireResult = { acquired: true; term: bigint } | { acquired: false; current: LeaseInfo | null };

/**
 * Every call settles (resolves or rejects) within a bound, whatever the store's host
 * or the network does: none hangs. MemoryLeaseStore answers at once; RedisLeaseStore
 * within its command timeout, which the services set to the lease's validity (ttl −
 * safety margin), so a renewal that can no longer keep the lease fails rather than
 * waits. A call that rejected may still take effect later (sent, but not answered in
 * time).
 */
export interface LeaseStore {
  /**
   * Takes the lease when nobody holds it (SET NX PX) and draws a new term: the
   * next value of an atomic counter, raised to `minTerm` when the counter is
   * behind (a Redis that lost its data restarts the counter at 0).
   */
  acquire(key: string, holder: string, ttlMs: number, minTerm: bigint): Promise<AcquireResult>;
  /** Extends the lease when (holder, term) still holds it; false otherwise. */
  renew(key: string, holder: string, term: bigint, ttlMs: number): Promise<boolean>;
  /** Drops the lease when (holder, term) holds it; false otherwise. */
  release(key: string, holder: string, term: bigint): Promise<boolean>;
  /** The current holder, if any. */
  read(key: string): Promise<LeaseInfo | null>;
  close(): Promise<void>;
}

/** Time as the lease logic sees it. */
export interface Clock {
  /** Monotonic milliseconds (never goes back; unrelated to the wall clock). */
  now(): number;
  /** Milliseconds since the Unix epoch. */
  wallMs(): number;
  /** Resolves after `ms` of this clock's time, or early (without error) on abort. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  wallMs: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve) => {
      if (signal?.aborted) return resolve();
      const done = () => {
        clearTimeout(t);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const t = setTimeout(done, ms);
      signal?.addEventListener('abort', done, { once: true });
    }),
};

/** The value stored under the lease key: "<term>|<holder>". */
export function encodeLeaseValue(holder: string, term: bigint): string {
  return `${term}|${holder}`;
}

export function parseLeaseValue(value: string | null | undefined): LeaseInfo | null {
  if (!value) return null;
  const bar = value.indexOf('|');
  if (bar <= 0) return null;
  const t = value.slice(0, bar);
  if (!/^\d+$/.test(t)) return null;
  return { term: BigInt(t), holder: value.slice(bar + 1) };
}
