import { randomBytes } from 'node:crypto';

/**
 * Redis credentials for `haystack dev` and the tests: one ACL user per Redis
 * (leases, cache) with a random password, the default user switched off
 * (https://redis.io/docs/latest/operate/oss_and_stack/management/security/acl/).
 * The user may run what Haystack runs (scripts, keys, hashes) but no
 * administration (CONFIG, ACL, SHUTDOWN, DEBUG...), FLUSHALL/FLUSHDB or KEYS.
 */
export interface RedisUser {
  name: string;
  password: string;
}

export const REDIS_USER_RULES = ['on', '~*', '&*', '+@all', '-@admin', '-flushall', '-flushdb', '-keys'];

export function newRedisUser(name: string): RedisUser {
  return { name, password: randomBytes(24).toString('hex') };
}

/** redis-server arguments that create `user` and disable the passwordless default user. */
export function redisAclArgs(user: RedisUser): string[] {
  return ['--user', 'default', 'off', '--user', user.name, ...REDIS_USER_RULES, `>${user.password}`];
}

/** The REDIS_URL a client of `user` uses (rediss:// when Redis serves TLS). */
export function redisUrl(user: RedisUser, host: string, port: number, tls = false): string {
  return `${tls ? 'rediss' : 'redis'}://${encodeURIComponent(user.name)}:${encodeURIComponent(user.password)}@${host}:${port}`;
}
