import type { Redis } from 'ioredis';

/**
 * Gives each connection of `redis` its own `socketTimeout` deadline. ioredis 5.x keeps the
 * timer on the client, not the socket (redis/ioredis#2147, fixed in 6.0): a connection lost
 * with a command outstanding left it armed, so it later destroyed the connection dialled in
 * its place (failing whatever that one had in flight) and, until then, no deadline watched
 * the new connection. Cleared on every close, before the reconnection is dialled.
 */
export function clearSocketTimeoutOnClose(redis: Redis): void {
  const client = redis as unknown as { socketTimeoutTimer?: ReturnType<typeof setTimeout> };
  redis.on('close', () => {
    clearTimeout(client.socketTimeoutTimer);
    client.socketTimeoutTimer = undefined;
  });
}
