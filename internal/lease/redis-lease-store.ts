import type { ConnectionOptions } from 'node:tls';
import type { Redis } from 'ioredis';
import { newRedisClient } from '../common/redis-client.js';
import {
  type AcquireResult,
  encodeLeaseValue,
  type LeaseInfo,
  type LeaseStore,
  parseLeaseValue,
} from './lease-store.js';

// KEYS[1] lease key, KEYS[2] term counter; ARGV holder, ttl ms, min term.
// SET NX PX takes the lease; only then is the counter bumped (INCR), raised to the
// minimum when Redis lost its data, and the value rewritten to "<term>|<holder>".
// One script: nobody can observe a won lease without its term.
const ACQUIRE = `
if not redis.call('SET', KEYS[1], 'acquiring', 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('GET', KEYS[1]) or ''}
end
local t = redis.call('INCR', KEYS[2])
local minT = tonumber(ARGV[3])
if t < minT then
  t = minT
  redis.call('SET', KEYS[2], string.format('%d', t))
end
local ts = string.format('%d', t)
redis.call('SET', KEYS[1], ts .. '|' .. ARGV[1], 'PX', ARGV[2])
return {1, ts}
`;

// Compare-and-set: only the exact "<term>|<holder>" value may extend or delete.
const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`;

export interface RedisLeaseStoreOptions {
  url: string;
  /** TLS for a rediss:// URL (security/redis-tls.ts); none for redis://. */
  tls?: ConnectionOptions | undefined;
  /**
   * Longest a single command may take before it counts as failed (ms): the bound on
   * every call (each is one command). For a holder, the lease's validity (ttl −
   * margin): a renewal answered within it keeps the lease (validity runs from its
   * send), one answered later cannot. Shorter timeouts lost leases under CPU
   * starvation while Redis still answered. Also how long the connection may stay
   * silent with a command outstanding before it is dropped and dialled again.
   */
  commandTimeoutMs: number;
  /**
   * Longest a connection attempt may take (ms), kept short apart from the command
   * timeout: a SYN lost to a partition is retried soon, so a healed network is
   * noticed within about this long.
   */
  connectTimeoutMs: number;
}

/**
 * LeaseStore on Redis: SET NX PX + INCR in one Lua script, CAS renew/release scripts.
 *
 * Every call settles within `commandTimeoutMs` (the LeaseStore bound), and fails at
 * once while disconnected: a Redis that stops answering (SIGSTOP, a partition) fails
 * renewals rather than holding them. A call that timed out may still run later, when
 * Redis answers again. A connection silent that long with a command outstanding (a
 * half-open socket whose peer is gone) is dropped and dialled again, not kept until
 * the kernel gives up on it (many minutes of timed-out calls).
 */
export class RedisLeaseStore implements LeaseStore {
  private readonly redis: Redis;

  constructor(opts: RedisLeaseStoreOptions) {
    if (!Number.isFinite(opts.commandTimeoutMs) || opts.commandTimeoutMs <= 0) {
      // 0 would fail every call at once; no timeout at all would leave calls unbounded.
      throw new RangeError(
        `RedisLeaseStore: commandTimeoutMs must be a positive number of ms, not ${opts.commandTimeoutMs}`,
      );
    }
    this.redis = newRedisClient(opts.url, {
      ...(opts.tls ? { tls: opts.tls } : {}),
      lazyConnect: false,
      // Fail at once while disconnected instead of queueing: a queued renewal that
      // runs late would be worse than a failed one.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: opts.commandTimeoutMs,
      socketTimeout: opts.commandTimeoutMs,
      connectTimeout: Math.max(200, opts.connectTimeoutMs),
      retryStrategy: (times) => Math.min(50 * times, 500),
      enableReadyCheck: false,
    });
    // Errors surface through the failing commands; keep ioredis from logging them.
    this.redis.on('error', () => {});
  }

  async acquire(key: string, holder: string, ttlMs: number, minTerm: bigint): Promise<AcquireResult> {
    const res = (await this.redis.eval(
      ACQUIRE,
      2,
      key,
      `${key}:term`,
      holder,
      String(Math.ceil(ttlMs)),
      minTerm.toString(),
    )) as [number, string];
    if (res[0] === 1) return { acquired: true, term: BigInt(res[1]) };
    return { acquired: false, current: parseLeaseValue(res[1]) };
  }

  async renew(key: string, holder: string, term: bigint, ttlMs: number): Promise<boolean> {
    const res = await this.redis.eval(
      RENEW,
      1,
      key,
      encodeLeaseValue(holder, term),
      String(Math.ceil(ttlMs)),
    );
    return res === 1;
  }

  async release(key: string, holder: string, term: bigint): Promise<boolean> {
    const res = await this.redis.eval(RELEASE, 1, key, encodeLeaseValue(holder, term));
    return res === 1;
  }

  async read(key: string): Promise<LeaseInfo | null> {
    return parseLeaseValue(await this.redis.get(key));
  }

  async close(): Promise<void> {
    this.redis.disconnect();
  }
}
