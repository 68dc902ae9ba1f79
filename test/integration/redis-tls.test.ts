import { connect as tcpConnect } from 'node:net';
import { Redis, type RedisOptions } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HaystackClient } from '../../internal/sdk/index.js';
import { createCa, issueCertificate } from '../../internal/security/ca.js';
import { Cluster } from '../helpers/cluster.js';
import { quiet, type RedisProcess } from '../helpers/redis.js';
import { bytes } from '../helpers/store-client.js';

/**
 * Issue 12, "Redis: … TLS where Redis supports it": both Redis servers serve TLS only
 * (plain port closed) and require a client certificate from the cluster CA; the
 * directories and the replication manager hold their leases and the gateways fill the
 * shared cache over rediss://. Real redis-server, real processes.
 */
let cluster: Cluster;

/** Polls `probe` until it returns a value (not undefined), or fails naming `what`. */
async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

beforeAll(async () => {
  cluster = await Cluster.start({ directories: 3, stores: 3, gateways: 1, cacheRedis: true, redisTls: true });
});
afterAll(async () => {
  await cluster?.stop();
});

/** A one-shot client: no reconnection, no queueing, so a refused handshake fails the command. */
function oneShot(url: string, opts: RedisOptions): Redis {
  return quiet(
    new Redis(url, {
      ...opts,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      retryStrategy: () => null,
      connectTimeout: 5_000,
    }),
  );
}

/** PING's answer, or the error a refused connection or handshake gives. */
async function ping(url: string, opts: RedisOptions): Promise<string> {
  const c = oneShot(url, opts);
  try {
    await c.connect();
    return await c.ping();
  } catch (err) {
    return `refused: ${(err as Error).message}`;
  } finally {
    c.disconnect();
  }
}

/** What the server sends back to a plaintext PING on its port (empty: it closed the connection). */
function plaintextPing(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = tcpConnect(port, '127.0.0.1');
    let got = '';
    s.on('data', (d) => {
      got += d.toString('latin1');
    });
    s.on('error', () => resolve(got));
    s.on('close', () => resolve(got));
    s.write('PING\r\n');
    setTimeout(() => s.destroy(), 5_000).unref();
  });
}

const servers = (): Array<[string, RedisProcess]> => [
  ['lease Redis', cluster.redis!],
  ['cache Redis', cluster.cacheRedis!],
];

describe('Redis over TLS (rediss://, client certificates required)', () => {
  it('the leases and the shared cache work over TLS: a leader, an active manager, uploads pushed to the cache', async () => {
    expect(cluster.redis!.url.startsWith('rediss://')).toBe(true);
    expect((await cluster.status()).leaderId).toMatch(/^directory-/);
    const lease = oneShot(cluster.redis!.adminUrl, await cluster.redis!.clientOptions());
    await lease.connect();
    await until(
      'the replication manager holds its lease in the TLS Redis',
      async () =>
        ((await lease.get('haystack:replication:lease')) ?? '').includes('replication') ? true : undefined,
      30_000,
    );
    lease.disconnect();

    const sdk = new HaystackClient({ url: cluster.url });
    const data = bytes(5000, 77);
    const b = await sdk.upload(data);
    expect(Buffer.from((await sdk.download(b.id)).data)).toEqual(Buffer.from(data));
    const cache = oneShot(cluster.cacheRedis!.adminUrl, await cluster.cacheRedis!.clientOptions());
    await cache.connect();
    await until(
      'the upload is in the shared cache',
      async () => ((await cache.exists(`haystack:blob:${b.id}`)) === 1 ? true : undefined),
      10_000,
    );
    cache.disconnect();
  });

  it('refuses plaintext, a TLS client without a certificate and one whose certificate another CA signed', async () => {
    const stranger = await createCa(1);
    const foreign = await issueCertificate(stranger, { role: 'admin', id: 'intruder' });
    for (const [name, r] of servers()) {
      const good = await r.clientOptions();
      const tls = good.tls!;
      // The positive control: the CA, an operator certificate and the password.
      expect(await ping(r.url, good), name).toBe('PONG');
      // The right password, no TLS: the server never answers a plaintext command.
      expect(await plaintextPing(r.port), name).not.toContain('PONG');
      expect(
        await ping(r.url.replace(/^rediss:/, 'redis:'), { tls: undefined } as RedisOptions),
        name,
      ).toMatch(/^refused/);
      // TLS trusting the CA, but no client certificate.
      expect(await ping(r.url, { tls: { ca: tls.ca } }), name).toMatch(/^refused/);
      // A client certificate from another CA.
      expect(
        await ping(r.url, { tls: { ca: tls.ca, cert: foreign.certPem, key: foreign.keyPem } }),
        name,
      ).toMatch(/^refused/);
    }
    // The cluster kept its leader through it all.
    expect((await cluster.status()).leaderId).toMatch(/^directory-/);
  });
});
