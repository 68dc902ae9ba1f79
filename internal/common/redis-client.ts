import { Redis, type RedisOptions } from 'ioredis';

/**
 * An ioredis client for a service (the lease store, the blob cache): `new Redis(url, options)`
 * with the workarounds for two ioredis 5.x bugs that a fault triggers (both fixed in ioredis 6;
 * 5.11 is what we run).
 *
 * - **A connection lost during its handshake ends all reconnection** (redis/ioredis#2099,
 *   fixed by #2123). The handshake sends CLIENT SETINFO and, with `enableReadyCheck: false`,
 *   marks the client ready once those answer, without checking that the connection is still
 *   the current one. When the connection closes first (Redis killed or restarting, a dropped
 *   socket) the handshake's commands fail, the stale callback marks the client "ready" on the
 *   dead socket while it waits to redial, the redial then refuses ("already
 *   connecting/connected"), and every call fails with "Stream isn't writeable" until the
 *   process restarts. With `maxRetriesPerRequest: 0` (fail fast, as the lease store and the
 *   cache do) every close fails the handshake at once, so any close inside that window hit
 *   it: both replication managers stayed on standby for minutes after Redis restarted
 *   (docs/faults.md). `disableClientInfo` leaves no handshake command to wait for; AUTH's own
 *   callback already checks the connection.
 * - **socketTimeout's timer lives on the client, not the socket** (redis/ioredis#2147): a
 *   connection lost with a command outstanding left it armed, so it later destroyed the
 *   connection dialled in its place (failing whatever that one had in flight) and, until
 *   then, no deadline watched the new connection. Cleared on every close, before the
 *   reconnection is dialled.
 *
 * Throws RangeError for a URL with a query string: ioredis reads options from it
 * (`?connectionName=…&disableClientInfo=`) and lets them override the ones given here, which
 * would bring the first bug back.
 */
export function newRedisClient(url: string, options: RedisOptions): Redis {
  if (!REDIS_URL.test(url)) throw new RangeError(`not ${REDIS_URL_SHAPE}: ${redactedRedisUrl(url)}`);
  const redis = new Redis(url, { ...options, disableClientInfo: true });
  const client = redis as unknown as { socketTimeoutTimer?: ReturnType<typeof setTimeout> };
  redis.on('close', () => {
    clearTimeout(client.socketTimeoutTimer);
    client.socketTimeoutTimer = undefined;
  });
  return redis;
}

/** A redis:// or rediss:// URL without a query string or fragment (REDIS_URL's shape). */
export const REDIS_URL = /^rediss?:\/\/[^?#\s]*$/;
/** REDIS_URL where empty is allowed (the gateway: no cache). */
export const REDIS_URL_OR_EMPTY = /^(rediss?:\/\/[^?#\s]*)?$/;
export const REDIS_URL_SHAPE =
  'a redis:// or rediss:// URL without "?" options (ioredis would let them override the client settings)';

/** `url` with its password replaced, for messages (config errors, logs). */
export function redactedRedisUrl(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}
