import { Writable } from 'node:stream';
import type { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CacheObserver, CacheUnreachableError } from '../../../internal/cache/blob-cache.js';
import { seal, unseal } from '../../../internal/cache/integrity.js';
import {
  decode,
  encode,
  encodeSealed,
  RedisBlobCache,
  type RedisCacheOptions,
} from '../../../internal/cache/redis-cache.js';
import { redisUrl } from '../../../internal/security/redis-acl.js';
import { quiet, RedisProcess, redisClient } from '../../helpers/redis.js';
import { TcpProxy } from '../../helpers/tcp-proxy.js';
import { blob, fill, push } from './blob.js';

function captureLogger() {
  const lines: Array<{ level: number; msg: string }> = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { log: pino({ level: 'info' }, stream), lines };
}

async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('RedisBlobCache entry codec', () => {
  it('round-trips metadata and bytes and rejects garbage', () => {
    const b = blob('x', 100, 7);
    expect(decode(encode(b))).toEqual({ meta: b.meta, data: Buffer.from(b.data) });
    expect(decode(Buffer.from('nope'))).toBeUndefined();
    expect(decode(encode(b).subarray(0, 50))).toBeUndefined();
  });

  it('builds the sealed entry in one buffer, byte for byte seal(encode(blob))', () => {
    const key = Buffer.alloc(32, 3);
    for (const size of [0, 100, 65_536]) {
      const b = blob(`s${size}`, size, 9);
      const sealed = encodeSealed(key, 'haystack:blob:s', b);
      expect(sealed.equals(seal(key, 'haystack:blob:s', encode(b)))).toBe(true);
      const body = unseal(key, 'haystack:blob:s', sealed);
      expect(body).not.toBe('forged');
      expect(decode(body as Buffer)).toEqual({ meta: b.meta, data: Buffer.from(b.data) });
      expect(unseal(key, 'haystack:blob:other', sealed)).toBe('forged');
    }
  });
});

/** Until `c` knows the cache's epoch (learned after each connection, asynchronously): leases are granted. */
async function epochLearned(c: RedisBlobCache): Promise<void> {
  await until(async () => {
    const l = await c.writeLease('warm');
    await c.release(l);
    return l.token !== undefined;
  });
}

/** The gateways' shared HMAC key (Redis never sees it). */
const KEY = Buffer.alloc(32, 7);
const events: string[] = [];

// These tests are about what the cache does, not its timeout: a loaded CI box can stall
// Redis or this process past the 500 ms default, which would count as an outage.
const COMMAND_TIMEOUT_MS = 5_000;

/** The options every cache here shares (on `redis`), with `more` on top. */
function cacheOptions(
  redis: RedisProcess,
  more: Partial<RedisCacheOptions> & Pick<RedisCacheOptions, 'log'>,
) {
  return {
    url: redis.url,
    ttlMs: 60_000,
    maxBlobSize: 1024,
    integrityKey: KEY,
    commandTimeoutMs: COMMAND_TIMEOUT_MS,
    // No directory here: the index a cache that lost it is restored to.
    leaderCommitIndex: async () => 0n,
    ...more,
  };
}

/** A quiet cache on `redis` whose observed events (`fill_dropped:<reason>`, …) go to `seen`. */
function observedCache(redis: RedisProcess, seen: string[], more: Partial<RedisCacheOptions> = {}) {
  return new RedisBlobCache(
    cacheOptions(redis, {
      log: pino({ level: 'silent' }),
      observe: (e, reason) => seen.push(reason ? `${e}:${reason}` : e),
      ...more,
    }),
  );
}

describe('RedisBlobCache on a real redis-server', () => {
  let redis: RedisProcess;
  let cache: RedisBlobCache;
  const { log, lines } = captureLogger();

  beforeAll(async () => {
    redis = await RedisProcess.start();
    cache = new RedisBlobCache(
      cacheOptions(redis, {
        log,
        observe: (e, reason) => events.push(reason ? `${e}:${reason}` : e),
        warnIntervalMs: 60_000,
        tombstoneMs: 2_000,
        statsFlushMs: 100,
      }),
    );
    await epochLearned(cache);
    await until(() => cache.available());
    // The commit index is restored on the first connection: leases are granted from then on.
    await until(async () => (await cache.lease('warm')).token !== undefined);
  });
  afterAll(async () => {
    await cache?.close();
    await redis?.stop();
  });

  it('misses, then hits after a push-on-write, keeping metadata and bytes', async () => {
    expect(await cache.get('p1')).toBeUndefined();
    await push(cache, blob('p1', 512, 9));
    const got = await cache.get('p1');
    expect(got?.meta).toEqual(blob('p1', 512).meta);
    expect(Buffer.from(got!.data)).toEqual(Buffer.alloc(512, 9));
  });

  it('never serves an entry planted in Redis: a forged or moved entry is a miss, counted as an integrity failure', async () => {
    await push(cache, blob('genuine', 100, 1));
    const raw = redisClient(redis.url);
    try {
      // Planted: well-formed, but without the MAC (the attacker does not have the key).
      await raw.set('haystack:blob:planted', encode(blob('planted', 100, 6)));
      // Moved: a genuine entry of another blob copied under this blob's key.
      await raw.set('haystack:blob:moved', (await raw.getBuffer('haystack:blob:genuine')) as Buffer);
      // Tampered: one byte of content flipped.
      const t = (await raw.getBuffer('haystack:blob:genuine')) as Buffer;
      t[t.length - 40] = (t[t.length - 40] ?? 0) ^ 1;
      await raw.set('haystack:blob:genuine', t);
    } finally {
      await raw.quit();
    }
    events.length = 0;
    expect(await cache.get('planted')).toBeUndefined();
    expect(await cache.get('moved')).toBeUndefined();
    expect(await cache.get('genuine')).toBeUndefined();
    expect(events.filter((e) => e === 'integrity_failure')).toHaveLength(3);
    expect(events.filter((e) => e === 'miss')).toHaveLength(3);
  });

  it('does not cache blobs above the size limit', async () => {
    await fill(cache, blob('big', 1025));
    expect(await cache.get('big')).toBeUndefined();
  });

  it('invalidates on delete and keeps racing read-through fills out', async () => {
    await push(cache, blob('d1', 10));
    const lease = await cache.lease('d2'); // a read under way when the deletes come
    expect(lease.token).toBeDefined();
    await cache.invalidate('d1');
    await cache.invalidate('d2');
    expect(await cache.get('d1')).toBeUndefined();
    events.length = 0;
    await cache.set(blob('d2', 10), { lease });
    expect(await cache.get('d2')).toBeUndefined();
    expect(await cache.lease('d1')).toEqual({ blobId: 'd1', refused: 'tombstone' });
    await fill(cache, blob('d1', 10));
    expect(await cache.get('d1')).toBeUndefined();
    expect(events.filter((e) => e.startsWith('fill_dropped'))).toEqual([
      'fill_dropped:lease_lost',
      'fill_dropped:tombstone',
    ]);
    await push(cache, blob('d1', 10));
    expect(await cache.get('d1')).toBeDefined();
  });

  it('refuses a fill whose lease a delete revoked after the tombstone expired (a gateway paused before its fill)', async () => {
    // The reviewer's case: the read took its lease, a delete came, the gateway stalled
    // past the tombstone's 2 s before sending the fill. Nothing but the lease refuses it.
    const raw = redisClient(redis.url);
    try {
      const lease = await cache.lease('paused');
      expect(await raw.get('haystack:lease:paused')).toBe(lease.token);
      await cache.invalidate('paused');
      expect(await raw.exists('haystack:lease:paused')).toBe(0);
      await until(async () => (await raw.exists('haystack:deleted:paused')) === 0);
      events.length = 0;
      await cache.set(blob('paused', 10), { lease });
      expect(await cache.get('paused')).toBeUndefined();
      expect(events).toContain('fill_dropped:lease_lost');
      await fill(cache, blob('paused', 10)); // a read begun after the delete fills
      expect(await cache.get('paused')).toBeDefined();
      expect(await raw.exists('haystack:lease:paused')).toBe(0); // the fill ended its lease
    } finally {
      raw.disconnect();
    }
  });

  it('lands a push under its write lease, ending the lease; over a tombstone too (a re-upload after a delete)', async () => {
    const raw = redisClient(redis.url);
    try {
      await cache.invalidate('w-re'); // deleted moments ago: the tombstone refuses fill leases
      expect(await cache.lease('w-re')).toEqual({ blobId: 'w-re', refused: 'tombstone' });
      const lease = await cache.writeLease('w-re');
      expect(lease.token).toMatch(/^[0-9a-f]{32}$/);
      expect(await raw.get('haystack:lease:w-re')).toBe(lease.token);
      events.length = 0;
      await cache.set(blob('w-re', 10, 4), { push: lease });
      expect((await cache.get('w-re'))?.data[0]).toBe(4);
      expect(events.filter((e) => e.startsWith('fill_dropped'))).toEqual([]);
      expect(await raw.exists('haystack:lease:w-re', 'haystack:deleted:w-re')).toBe(0);
    } finally {
      raw.disconnect();
    }
  });

  it('drops a push whose write lease a delete revoked (acknowledged between the commit and the push): write_lease_lost', async () => {
    const lease = await cache.writeLease('w-del'); // before the stores' stream ends
    expect(lease.token).toBeDefined();
    await cache.invalidate('w-del'); // the delete, acknowledged after the write committed
    events.length = 0;
    await cache.set(blob('w-del', 10), { push: lease }); // the push, late
    expect(await cache.get('w-del')).toBeUndefined();
    expect(events.filter((e) => e.startsWith('fill_dropped'))).toEqual(['fill_dropped:write_lease_lost']);
    // A read begun after the delete gets no lease while the tombstone stands, so no fill either.
    expect(await cache.lease('w-del')).toEqual({ blobId: 'w-del', refused: 'tombstone' });
  });

  it('a write lease supersedes a fill lease, refuses fill leases asked after it, and the later of two writes pushes', async () => {
    const before = await cache.lease('w-f'); // a read under way when the write starts
    expect(before.token).toBeDefined();
    const first = await cache.writeLease('w-f');
    expect(await cache.lease('w-f')).toEqual({ blobId: 'w-f', refused: 'lease_held' }); // a read during the write
    const second = await cache.writeLease('w-f'); // a second upload of the id (same content)
    events.length = 0;
    await cache.set(blob('w-f', 10, 1), { lease: before });
    await cache.set(blob('w-f', 10, 2), { push: first });
    expect(await cache.get('w-f')).toBeUndefined();
    await cache.set(blob('w-f', 10, 3), { push: second });
    expect((await cache.get('w-f'))?.data[0]).toBe(3);
    expect(events.filter((e) => e.startsWith('fill_dropped'))).toEqual([
      'fill_dropped:lease_lost',
      'fill_dropped:write_lease_lost',
    ]);
    expect(await cache.lease('w-f')).toEqual({ blobId: 'w-f' }); // cached: nothing to fill
  });

  it('grants one lease per id at a time; a released or expired one frees it; a write lease revokes it', async () => {
    const short = new RedisBlobCache(
      cacheOptions(redis, { log, prefix: 'lease:', observe: (_e, r) => r && events.push(r) }),
    );
    try {
      await until(() => short.available());
      await until(async () => (await short.lease('warm')).token !== undefined); // the epoch is learned
      const first = await short.lease('a');
      const second = await short.lease('a');
      expect(first.token).toMatch(/^[0-9a-f]{32}$/);
      expect(second).toEqual({ blobId: 'a', refused: 'lease_held' });
      events.length = 0;
      await short.set(blob('a', 10), { lease: second });
      expect(await short.get('a')).toBeUndefined();
      await short.release(first);
      const third = await short.lease('a');
      await short.set(blob('a', 10), { lease: first }); // given back: not the id's lease now
      expect(await short.get('a')).toBeUndefined();
      await short.set(blob('a', 10), { lease: third });
      expect(await short.get('a')).toBeDefined();
      expect(await short.lease('a')).toEqual({ blobId: 'a' }); // cached since the miss
      const late = await short.lease('b');
      const raw = redisClient(redis.url);
      await raw.pexpire('lease:lease:b', 1); // expired: lost (liveness only)
      await until(async () => (await raw.exists('lease:lease:b')) === 0);
      raw.disconnect();
      await short.set(blob('b', 10), { lease: late });
      expect(await short.get('b')).toBeUndefined();
      const revoked = await short.lease('b');
      expect(revoked.token).toBeDefined();
      await push(short, blob('b', 10, 2));
      await short.set(blob('b', 10, 1), { lease: revoked });
      expect((await short.get('b'))?.data[0]).toBe(2);
      expect(events).toEqual(['lease_held', 'lease_lost', 'lease_lost', 'lease_lost']);
    } finally {
      await short.close();
    }
  });

  it('shares the highest commit index between gateways, never lowering it', async () => {
    const other = new RedisBlobCache({
      url: redis.url,
      ttlMs: 60_000,
      maxBlobSize: 1024,
      integrityKey: KEY,
      commandTimeoutMs: COMMAND_TIMEOUT_MS,
      leaderCommitIndex: async () => 0n,
      log,
    });
    await until(() => other.available());
    await other.publishCommitIndex(42n);
    await other.publishCommitIndex(7n);
    expect(other.sharedCommitIndex()).toBe(42n);
    await cache.get('anything'); // every lookup refreshes it
    expect(cache.sharedCommitIndex()).toBe(42n);
    await other.close();
  });

  it('hands back the shared commit index with the lease (the read then asks for every delete before it)', async () => {
    const other = new RedisBlobCache(cacheOptions(redis, { log }));
    try {
      await until(() => other.available());
      await other.publishCommitIndex(5_000n);
      expect(cache.sharedCommitIndex()).toBeLessThan(5_000n);
      await cache.lease('idx');
      expect(cache.sharedCommitIndex()).toBe(5_000n);
    } finally {
      await other.close();
    }
  });

  it('sets the TTL on entries', async () => {
    const short = new RedisBlobCache({
      url: redis.url,
      ttlMs: 300,
      maxBlobSize: 1024,
      integrityKey: KEY,
      commandTimeoutMs: COMMAND_TIMEOUT_MS,
      leaderCommitIndex: async () => 0n,
      log,
      prefix: 'ttl:',
    });
    await epochLearned(short);
    await push(short, blob('ttl', 10));
    expect(await short.get('ttl')).toBeDefined();
    await new Promise((r) => setTimeout(r, 400));
    expect(await short.get('ttl')).toBeUndefined();
    await short.close();
  });

  it('shares hit and miss counts across processes through Redis', async () => {
    const other = new RedisBlobCache({
      url: redis.url,
      ttlMs: 60_000,
      maxBlobSize: 1024,
      integrityKey: KEY,
      commandTimeoutMs: COMMAND_TIMEOUT_MS,
      leaderCommitIndex: async () => 0n,
      log,
    });
    await until(() => other.available());
    await other.get('p1'); // hit
    await other.get('nope'); // miss
    const mine = await cache.stats();
    const theirs = await other.stats();
    expect(theirs.local).toEqual({ hits: 1, misses: 1 });
    await until(async () => {
      const s = await cache.stats();
      return s.cluster.hits >= mine.local.hits + 1;
    });
    const s = await cache.stats();
    expect(s.cluster.hits + s.cluster.misses).toBe(
      mine.local.hits + mine.local.misses + theirs.local.hits + theirs.local.misses,
    );
    await other.close();
  });

  it('bypasses a dead Redis quickly with one warning, refuses deletions and resumes when it is back', async () => {
    await push(cache, blob('keep', 10));
    await push(cache, blob('gone', 10));
    const before = lines.length; // warnings of this outage only (not of an earlier stall)
    await redis.kill();
    await until(() => !cache.available());
    const t0 = Date.now();
    for (let i = 0; i < 50; i++) expect(await cache.get('keep')).toBeUndefined();
    expect(await cache.writeLease('x')).toEqual({ blobId: 'x' }); // no push, the write goes on
    await push(cache, blob('x', 10));
    await expect(cache.invalidate('gone')).rejects.toBeInstanceOf(CacheUnreachableError);
    // No call waited for a command timeout (53 calls would take minutes); a bound, not a speed figure.
    expect(Date.now() - t0).toBeLessThan(COMMAND_TIMEOUT_MS);
    const warnings = lines.slice(before).filter((l) => l.msg.startsWith('redis cache unavailable'));
    expect(warnings.length, JSON.stringify(warnings)).toBe(1);

    // A restarted Redis (same data would come back from a partition; here it is empty).
    await redis.restart();
    await epochLearned(cache);
    await push(cache, blob('keep', 10));
    expect(await cache.get('keep')).toBeDefined();
    expect(lines.some((l) => l.msg.startsWith('redis cache available again'))).toBe(true);
  });
});

// Its own redis-server: pausing writes there must not disturb the other tests' Redis.
describe('RedisBlobCache write lease timing out', () => {
  it('gives no write lease when its SET times out (the write goes on without a push), and its late SET lands nothing', async () => {
    const redis = await RedisProcess.start();
    const dropped: string[] = [];
    const observe: CacheObserver = (e, reason) => e === 'fill_dropped' && dropped.push(reason ?? '');
    const slow = new RedisBlobCache({
      ...cacheOptions(redis, { log: pino({ level: 'silent' }), observe }),
      commandTimeoutMs: 200,
    });
    const admin = redisClient(redis.adminUrl);
    try {
      await epochLearned(slow);
      // Scripts that write wait while clients are paused for writes; the 200 ms timeout ends the wait.
      await admin.client('PAUSE', 60_000, 'WRITE');
      let lease: Awaited<ReturnType<RedisBlobCache['writeLease']>>;
      try {
        lease = await slow.writeLease('late');
      } finally {
        await admin.client('UNPAUSE');
      }
      expect(lease).toEqual({ blobId: 'late' });
      // The SET was sent: it runs once the pause ends, unconfirmed (it only blocks fills until it expires).
      await until(async () => (await admin.exists('haystack:lease:late')) === 1);
      await slow.set(blob('late', 10), { push: lease });
      expect(await slow.get('late')).toBeUndefined();
      expect(await admin.exists('haystack:blob:late')).toBe(0);
      expect(dropped).toEqual([]); // not counted: the cache had nothing to say
    } finally {
      admin.disconnect();
      await slow.close();
      await redis.stop();
    }
  });
});

// Its own redis-server: stopped (SIGSTOP) here.
describe('RedisBlobCache on a stalled Redis', () => {
  it('misses within the command timeout, then bypasses the cache at once until Redis answers again', async () => {
    const redis = await RedisProcess.start();
    const TIMEOUT_MS = 300;
    const SLACK_MS = 1_500; // what a loaded two-core box may add to a timer
    const cache = new RedisBlobCache(
      cacheOptions(redis, { log: pino({ level: 'silent' }), commandTimeoutMs: TIMEOUT_MS }),
    );
    try {
      await epochLearned(cache);
      await until(async () => {
        await fill(cache, blob('s1', 10));
        return (await cache.get('s1')) !== undefined;
      });
      redis.pause(); // the connection stays open; nothing answers
      try {
        let t0 = performance.now();
        expect(await cache.get('s1')).toBeUndefined(); // timed out: a miss
        expect(performance.now() - t0).toBeLessThanOrEqual(TIMEOUT_MS + SLACK_MS);
        // The silent connection is dropped (after twice the timeout, at least 1 s), and the
        // new one is not ready while Redis says nothing: reads stop waiting for it.
        await until(() => !cache.available(), 1_000 + SLACK_MS);
        t0 = performance.now();
        expect(await cache.get('s1')).toBeUndefined();
        expect(performance.now() - t0).toBeLessThan(TIMEOUT_MS);
      } finally {
        redis.resume();
      }
      // Served again (until: a loaded box can still time one get out at 300 ms).
      await until(async () => (await cache.get('s1')) !== undefined);
    } finally {
      await cache.close();
      await redis.stop();
    }
  });
});

describe('RedisBlobCache epoch fence (issue 14: no resurrection when Redis loses its state)', () => {
  let redis: RedisProcess;
  let cache: RedisBlobCache;
  let admin: Redis;
  const seen: string[] = [];
  const EPOCH = 'haystack:cache:epoch';

  /** Waits until a fill of a read begun now lands (the cache knows the current epoch). */
  async function fillLands(id: string): Promise<void> {
    await until(async () => {
      await fill(cache, blob(id, 10));
      return (await cache.get(id)) !== undefined;
    });
  }

  beforeAll(async () => {
    redis = await RedisProcess.start();
    // Long lease: the fence, not an expired lease, must be what drops the fills here.
    cache = observedCache(redis, seen, { leaseMs: 600_000 });
    admin = redisClient(redis.adminUrl);
    await until(() => cache.available());
    await fillLands('warm');
  });
  afterAll(async () => {
    admin?.disconnect();
    await cache?.close();
    await redis?.stop();
  });

  it('stores a random epoch once and keeps it', async () => {
    const epoch = await admin.get(EPOCH);
    expect(epoch).toMatch(/^[0-9a-f]{32}$/);
    await fillLands('warm2');
    expect(await admin.get(EPOCH)).toBe(epoch);
  });

  it('drops a fill whose read began before a delete when Redis restarted empty in between', async () => {
    const lease = await cache.lease('r1');
    expect(lease.token).toBeDefined();
    await push(cache, blob('r1', 10));
    await cache.invalidate('r1'); // the delete, acknowledged: tombstone written
    const before = await admin.get(EPOCH);
    admin.disconnect();
    await redis.kill();
    await redis.restart(); // empty: tombstone and epoch gone
    admin = redisClient(redis.adminUrl);
    await until(() => cache.available());
    await fillLands('after-restart'); // the epoch is re-learned (a new one) and fills resume
    expect(await admin.exists('haystack:deleted:r1')).toBe(0);
    const n = seen.length;
    await cache.set(blob('r1', 10), { lease });
    expect(await cache.get('r1')).toBeUndefined();
    expect(seen.slice(n)).toContain('fill_dropped:before_epoch');
    expect(await admin.get(EPOCH)).not.toBe(before);
  });

  it('refuses a fill when the epoch is missing or another (state lost without a reconnection), then re-learns it', async () => {
    await fillLands('f0');
    const lease = await cache.lease('f1');
    expect(lease.token).toBeDefined();
    await admin.flushall(); // epoch and lease gone, the connection stays up
    let n = seen.length;
    await cache.set(blob('f1', 10), { lease });
    expect(await cache.get('f1')).toBeUndefined();
    expect(seen.slice(n)).toContain('fill_dropped:epoch_changed');
    await until(async () => (await admin.get(EPOCH)) !== null); // re-learned: a new epoch
    // Another epoch under the cache (e.g. a failover to a replica that had its own).
    await fillLands('f2');
    const lease3 = await cache.lease('f3');
    expect(lease3.token).toBeDefined();
    await admin.set(EPOCH, 'another');
    n = seen.length;
    await cache.set(blob('f3', 10), { lease: lease3 });
    expect(await cache.get('f3')).toBeUndefined();
    expect(seen.slice(n)).toContain('fill_dropped:epoch_changed');
    await fillLands('f4'); // learns 'another' and fills again
    expect(await admin.get(EPOCH)).toBe('another');
  });

  it('drops a fill whose lease predates a re-learned epoch, though the lease key survived (a failover that lost the revocation)', async () => {
    await fillLands('g0');
    const lease = await cache.lease('g1');
    expect(lease.token).toBeDefined();
    // The delete's revocation is lost (a replica promoted without it): the lease is still
    // there, but the failover broke the connection and the gateway re-learned the epoch.
    await admin.client('KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
    await until(() => !cache.available()); // reconnects after 100 ms at the earliest
    await until(() => cache.available());
    await fillLands('g2');
    expect(await admin.get('haystack:lease:g1')).toBe(lease.token);
    const n = seen.length;
    await cache.set(blob('g1', 10), { lease });
    expect(await cache.get('g1')).toBeUndefined();
    expect(seen.slice(n)).toContain('fill_dropped:before_epoch');
  });

  it('fences pushes as fills: a write lease from before a re-learned epoch, or none while the epoch is missing, pushes nothing', async () => {
    await fillLands('h0');
    const lease = await cache.writeLease('h1');
    expect(lease.token).toBeDefined();
    await admin.client('KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
    await until(() => !cache.available());
    await until(() => cache.available());
    await fillLands('h2');
    expect(await admin.get('haystack:lease:h1')).toBe(lease.token);
    let n = seen.length;
    await cache.set(blob('h1', 10), { push: lease });
    expect(await cache.get('h1')).toBeUndefined();
    expect(seen.slice(n)).toEqual(['fill_dropped:before_epoch', 'miss']);
    await admin.del(EPOCH); // state lost without a reconnection
    n = seen.length;
    await push(cache, blob('w1', 10));
    expect(await cache.get('w1')).toBeUndefined();
    expect(seen.slice(n)).toEqual(['fill_dropped:epoch_changed', 'miss']);
    await until(async () => (await admin.get(EPOCH)) !== null); // re-learned: pushes land again
    await until(async () => {
      await push(cache, blob('w1', 10));
      return (await cache.get('w1')) !== undefined;
    });
  });
});

describe('RedisBlobCache: a delete is acknowledged only once the cache was told', () => {
  let redis: RedisProcess;
  let proxy: TcpProxy;
  let cache: RedisBlobCache;
  let admin: Redis;

  beforeAll(async () => {
    redis = await RedisProcess.start();
    proxy = await TcpProxy.start(redis.port);
    cache = new RedisBlobCache(
      cacheOptions(redis, {
        url: redisUrl(redis.user, '127.0.0.1', proxy.port),
        log: pino({ level: 'silent' }),
        // Short: a stalled Redis must fail the invalidation quickly.
        commandTimeoutMs: 1_000,
      }),
    );
    admin = redisClient(redis.adminUrl);
    await until(() => cache.available());
    await until(async () => (await cache.lease('warm')).token !== undefined);
  });
  /** Whether an invalidation of `id` reached Redis (a retry loop's condition). */
  const told = (id: string) =>
    cache.invalidate(id).then(
      () => true,
      () => false,
    );

  afterAll(async () => {
    redis?.resume();
    admin?.disconnect();
    await cache?.close();
    await proxy?.close();
    await redis?.stop();
  });

  it('rejects an invalidation while Redis is unreachable, naming it without credentials', async () => {
    proxy.cut();
    await until(() => !cache.available());
    const err = await cache.invalidate('cut1').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CacheUnreachableError);
    expect((err as CacheUnreachableError).code).toBe('UNAVAILABLE');
    expect((err as Error).message).toContain(`127.0.0.1:${proxy.port}`);
    expect((err as Error).message).not.toContain(redis.user.password);
    proxy.heal();
    await until(() => cache.available());
    // Told once it is back: the retry succeeds.
    await until(() => told('cut1'));
    expect(await admin.exists('haystack:deleted:cut1')).toBe(1);
  });

  it('rejects an invalidation whose transaction timed out on a live connection', async () => {
    await admin.set('haystack:blob:stall', 'entry');
    redis.pause();
    try {
      await expect(cache.invalidate('stall')).rejects.toBeInstanceOf(CacheUnreachableError);
    } finally {
      redis.resume();
    }
    await until(() => told('stall')); // the retry
    expect(await admin.exists('haystack:blob:stall')).toBe(0);
  });

  it('drops lease keys before blob keys when too many deletions were missed', async () => {
    await admin.set('haystack:blob:kept', 'entry');
    await admin.set('haystack:lease:reading', 'token');
    proxy.cut();
    await until(() => !cache.available());
    for (let i = 0; i <= 10_000; i++) await cache.invalidate(`missed${i}`).catch(() => {});
    const monitor = quiet(await admin.monitor());
    const dels: string[] = [];
    monitor.on('monitor', (_time: string, args: string[]) => {
      if (args[0]?.toLowerCase() === 'del') dels.push(...args.slice(1));
    });
    try {
      proxy.heal();
      await until(async () => (await admin.exists('haystack:blob:kept')) === 0);
      const lease = dels.indexOf('haystack:lease:reading');
      const entry = dels.indexOf('haystack:blob:kept');
      expect(lease, JSON.stringify(dels)).toBeGreaterThanOrEqual(0);
      expect(lease).toBeLessThan(entry);
    } finally {
      monitor.disconnect();
    }
  });
});

describe('RedisBlobCache: no fill lease while the shared commit index is missing', () => {
  let redis: RedisProcess;
  let cache: RedisBlobCache;
  let admin: Redis;
  const seen: string[] = [];
  /** What the directory leader answers (undefined: no leader). */
  let leader: bigint | undefined = 900n;
  /** While set, the leader's answer (read when asked) waits for it. */
  let hold: Promise<void> | undefined;
  let asked = 0;
  const INDEX = 'haystack:commit-index';

  beforeAll(async () => {
    redis = await RedisProcess.start();
    cache = observedCache(redis, seen, {
      leaderCommitIndex: async () => {
        asked++;
        const answer = leader;
        await hold;
        if (answer === undefined) throw new Error('no directory leader is reachable');
        return answer;
      },
    });
    admin = redisClient(redis.adminUrl);
    await until(() => cache.available());
  });
  afterAll(async () => {
    admin?.disconnect();
    await cache?.close();
    await redis?.stop();
  });

  it('restores the index to the leader commit index on a new cache, then grants leases', async () => {
    await until(async () => (await admin.get(INDEX)) !== null);
    expect(await admin.get(INDEX)).toBe('900');
    const lease = await cache.lease('a');
    expect(lease.token).toBeDefined();
    expect(cache.sharedCommitIndex()).toBe(900n);
  });

  it('refuses leases while the index is missing (index_missing), and resumes once it is restored', async () => {
    leader = undefined; // the directory cannot say: the index stays missing
    await admin.del(INDEX);
    const n = seen.length;
    await fill(cache, blob('m1', 10));
    expect(await cache.get('m1')).toBeUndefined();
    expect(seen.slice(n)).toContain('fill_dropped:index_missing');
    expect(await admin.get(INDEX)).toBeNull();
    // A delete acknowledged meanwhile raises the floor, never creates the index.
    await cache.publishCommitIndex(1_000n);
    await cache.invalidate('m0');
    expect(await admin.get(INDEX)).toBeNull();
    expect(await admin.get('haystack:commit-index-floor')).toBe('1000');
    expect(await cache.lease('m1')).toEqual({ blobId: 'm1', refused: 'index_missing' });

    leader = 950n; // below the floor: the highest wins
    await until(async () => (await cache.lease('m2')).token !== undefined);
    expect(await admin.get(INDEX)).toBe('1000');
    await fill(cache, blob('m3', 10));
    expect(await cache.get('m3')).toBeDefined();
  });

  it('a restore whose leader index was read before the cache lost its state again lands nothing', async () => {
    let open = () => {};
    hold = new Promise<void>((r) => {
      open = r;
    });
    try {
      leader = 2_500n; // read by the restore below, stale once a delete at 2600 is acknowledged
      await admin.del(INDEX);
      const before = asked;
      await until(async () => {
        await cache.lease('s1'); // refused index_missing: starts a restore, which waits in `hold`
        return asked > before;
      });
      // A delete (through another gateway) is acknowledged at 2600, then the cache loses its
      // state again, its raise with it; the leader has the delete.
      await admin.set(INDEX, '2600');
      await admin.flushall();
      leader = 2_600n;
    } finally {
      hold = undefined;
      open();
    }
    // The stale restore is refused (the epoch changed); a later one restores the leader's.
    await until(async () => (await cache.lease('s2')).token !== undefined);
    expect(await admin.get(INDEX)).toBe('2600');
  });

  it('restores the index after Redis restarts empty before any lease', async () => {
    leader = 3_000n; // above what this gateway knows (2600): the leader's wins
    await redis.kill();
    await redis.restart();
    admin.disconnect();
    admin = redisClient(redis.adminUrl);
    await until(() => cache.available());
    await until(async () => (await cache.lease('r1')).token !== undefined);
    expect(await admin.get(INDEX)).toBe('3000');
  });

  it('keeps retrying a restore the leader did not answer, without waiting for a read to ask', async () => {
    leader = undefined; // no leader when the cache comes back empty
    await redis.kill();
    await redis.restart();
    admin.disconnect();
    admin = redisClient(redis.adminUrl);
    await until(() => cache.available());
    const before = asked;
    await until(() => asked >= before + 2); // asked again with no lease requested
    expect(await admin.get(INDEX)).toBeNull();
    leader = 3_100n; // a leader is back: the next retry restores, still without any lease
    await until(async () => (await admin.get(INDEX)) !== null);
    expect(await admin.get(INDEX)).toBe('3100');
  });
});
