import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RedisLeaseStore } from '../../../internal/lease/redis-lease-store.js';
import { redisUrl } from '../../../internal/security/redis-acl.js';
import { RedisProcess, redisClient } from '../../helpers/redis.js';
import { RedisHoldProxy } from '../../helpers/redis-hold-proxy.js';

/**
 * The store's per-call bound (its command timeout; the services give it the lease's
 * validity). Not shorter: a loaded CI box has stalled Redis past 500 ms.
 */
const BOUND_MS = 1_500;
/** What a loaded two-core box may add to a timer. */
const SLACK_MS = 1_500;
/** A TTL no test here outlives: a lease taken before a stall still holds after it. */
const TTL_MS = 60_000;

type Outcome = { settled: 'resolved' | 'rejected'; ms: number } | { settled: 'hung'; ms: number };

/** How `call` settled, and after how long; 'hung' when it had not after `waitMs`. */
async function timed(call: () => Promise<unknown>, waitMs = BOUND_MS + SLACK_MS): Promise<Outcome> {
  const t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<'hung'>((r) => {
    timer = setTimeout(() => r('hung'), waitMs);
  });
  const res = await Promise.race([
    call().then(
      () => 'resolved' as const,
      () => 'rejected' as const,
    ),
    hung,
  ]);
  clearTimeout(timer);
  return { settled: res, ms: Math.round(performance.now() - t0) };
}

async function until(cond: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond().catch(() => false))) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

function store(url: string): RedisLeaseStore {
  return new RedisLeaseStore({ url, commandTimeoutMs: BOUND_MS, connectTimeoutMs: 400 });
}

describe('RedisLeaseStore on a real redis-server', () => {
  let redis: RedisProcess;
  let admin: Redis;
  const stores: RedisLeaseStore[] = [];
  /** A store on `url` once connected (it fails calls at once, not queues them, until then). */
  const open = async (url: string) => {
    const s = store(url);
    stores.push(s);
    await until(async () => (await s.read('lease')) === null);
    return s;
  };

  beforeAll(async () => {
    redis = await RedisProcess.start();
    admin = redisClient(redis.adminUrl);
  });
  afterEach(async () => {
    redis.resume();
    for (const s of stores.splice(0)) await s.close();
    await admin.flushall().catch(() => {});
  });
  afterAll(async () => {
    admin?.disconnect();
    await redis?.stop();
  });

  it('rejects its option of no bound', () => {
    for (const commandTimeoutMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => new RedisLeaseStore({ url: redis.url, commandTimeoutMs, connectTimeoutMs: 400 })).toThrow(
        /commandTimeoutMs/,
      );
    }
  });

  it('fails every call within its command timeout while Redis is stopped (SIGSTOP), and serves again after SIGCONT', async () => {
    const s = await open(redis.url);
    const won = await s.acquire('lease', 'a', TTL_MS, 0n);
    expect(won.acquired).toBe(true);
    const term = won.acquired ? won.term : 0n;
    redis.pause(); // the connection stays open; nothing answers
    const calls: Record<string, () => Promise<unknown>> = {
      renew: () => s.renew('lease', 'a', term, TTL_MS),
      acquire: () => s.acquire('lease', 'b', TTL_MS, 0n),
      read: () => s.read('lease'),
      release: () => s.release('lease', 'a', term),
    };
    const seen: Record<string, Outcome> = {};
    for (const [name, call] of Object.entries(calls)) seen[name] = await timed(call);
    redis.resume();
    for (const [name, o] of Object.entries(seen)) {
      expect(o.settled, `${name}: ${JSON.stringify(seen)}`).toBe('rejected');
      expect(o.ms, `${name}: ${JSON.stringify(seen)}`).toBeLessThanOrEqual(BOUND_MS + SLACK_MS);
    }
    // The store answers again. A call that timed out may still have run once Redis resumed
    // (the release: the lease is free), or not (a call failed at once while the silent
    // connection was being replaced was never sent: a still holds it).
    await until(async () => {
      await s.read('lease');
      return true;
    });
    const now = await s.read('lease');
    expect(now === null || (now.holder === 'a' && now.term === term), String(now?.holder)).toBe(true);
    await s.release('lease', 'a', term);
    expect(await s.acquire('lease', 'a', TTL_MS, 0n)).toEqual({ acquired: true, term: term + 1n });
  });

  it('replaces a connection that stops answering (a half-open socket), so calls succeed again', async () => {
    const proxy = await RedisHoldProxy.start({ host: '127.0.0.1', port: redis.port });
    try {
      const s = await open(redisUrl(redis.user, '127.0.0.1', proxy.port));
      const won = await s.acquire('lease', 'a', TTL_MS, 0n);
      const term = won.acquired ? won.term : 0n;
      // This connection's next EVAL, and all it sends after, never reach Redis: a dead peer
      // whose kernel would keep the socket "open" for many minutes.
      const held = proxy.hold((args) => args[0]?.toLowerCase() === 'eval');
      const renew = timed(() => s.renew('lease', 'a', term, TTL_MS));
      await held;
      const first = await renew;
      expect(first.settled, JSON.stringify(first)).toBe('rejected');
      expect(first.ms).toBeLessThanOrEqual(BOUND_MS + SLACK_MS);
      // Within about one more bound the silent connection is dropped and a new one dialled.
      const t0 = performance.now();
      await until(() => s.renew('lease', 'a', term, TTL_MS), 2 * BOUND_MS + 2 * SLACK_MS);
      expect(performance.now() - t0).toBeLessThanOrEqual(2 * BOUND_MS + 2 * SLACK_MS);
    } finally {
      await proxy.close();
    }
  });

  it('dials again after a connection lost during its handshake (ioredis#2099 left it "ready" on the dead socket, failing every call)', async () => {
    const proxy = await RedisHoldProxy.start({ host: '127.0.0.1', port: redis.port });
    try {
      const s = await open(redisUrl(redis.user, '127.0.0.1', proxy.port));
      // The next connection is accepted but its handshake (AUTH, and all after it) never
      // answered: a Redis killed, or still starting, just as the store redials.
      const held = proxy.hold((args) => args[0]?.toLowerCase() === 'auth');
      proxy.dropConnections();
      await held;
      proxy.dropConnections();
      // Redis is reachable again through the proxy: the store serves within a few redials.
      await until(async () => (await s.read('lease')) === null, 10_000);
      const won = await s.acquire('lease', 'a', TTL_MS, 0n);
      expect(won.acquired).toBe(true);
    } finally {
      await proxy.close();
    }
  });

  it("keeps the connection dialled after one lost with a call in flight (the old connection's deadline does not end it)", async () => {
    const s = await open(redis.url);
    const mine = async () =>
      String(await admin.client('LIST'))
        .split('\n')
        .filter((l) => l.includes(` user=${redis.user.name} `))
        .map((l) => /\bid=(\d+)/.exec(l)?.[1]);
    // A read in flight when Redis dies: its connection closes with the read outstanding.
    redis.pause();
    const lost = timed(() => s.read('lease'));
    await new Promise((r) => setTimeout(r, 100));
    await redis.kill();
    expect((await lost).settled).toBe('rejected');
    const lostAt = performance.now();
    await redis.restart();
    await admin.ping();
    await until(async () => (await s.read('lease')) === null);
    const dialled = await mine();
    expect(dialled).toHaveLength(1);
    // Past the lost connection's deadline, with calls answered all along: still the same one.
    while (performance.now() - lostAt < BOUND_MS + 500) {
      await s.read('lease').catch(() => {});
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(await s.read('lease')).toBeNull();
    expect(await mine()).toEqual(dialled);
  });
});
