import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { newRedisClient } from '../../internal/common/redis-client.js';
import {
  ConfigError,
  EnvReader,
  parseDuration,
  parseHostPort,
  parseSize,
} from '../../internal/config/env.js';
import { readDirectoryConfig } from '../../internal/directory/config.js';
import { readGatewayConfig } from '../../internal/gateway/config.js';
import { readReplicationConfig } from '../../internal/replication/config.js';
import { readStoreConfig } from '../../internal/store/config.js';
import { identityEnv } from '../helpers/pki.js';

/** Unit tests of config parsing: no transport is opened. */
const PLAIN = { INSECURE_PLAINTEXT: '1' };

describe('env parsing', () => {
  it('reads sizes with units', () => {
    expect(parseSize('4GiB')).toBe(4 * 1024 ** 3);
    expect(parseSize('512mb')).toBe(512 * 1024 ** 2);
    expect(parseSize('65536')).toBe(65536);
    expect(parseSize('1.5k')).toBe(1536);
    expect(parseSize('ten')).toBeUndefined();
    expect(parseSize('5 parsecs')).toBeUndefined();
  });

  it('reads durations, bare numbers in the given unit', () => {
    expect(parseDuration('30', 's')).toBe(30_000);
    expect(parseDuration('0.5', 's')).toBe(500);
    expect(parseDuration('250ms', 's')).toBe(250);
    expect(parseDuration('2m', 'ms')).toBe(120_000);
    expect(parseDuration('-1', 's')).toBeUndefined();
  });

  it('reads host:port', () => {
    expect(parseHostPort('127.0.0.1:9000')).toEqual({ host: '127.0.0.1', port: 9000 });
    expect(parseHostPort('[::1]:80')).toEqual({ host: '::1', port: 80 });
    expect(parseHostPort('host:70000')).toBeUndefined();
    expect(parseHostPort('host')).toBeUndefined();
  });

  it('round-trips any integer in range and rejects any out of it', () => {
    fc.assert(
      fc.property(fc.integer({ min: -1000, max: 1000 }), (n) => {
        const r = new EnvReader({ N: String(n) });
        const v = r.int('N', 7, { min: 0, max: 500 });
        if (n >= 0 && n <= 500) {
          expect(v).toBe(n);
          r.done();
        } else {
          expect(() => r.done()).toThrow(ConfigError);
        }
      }),
    );
  });

  it('collects every problem and names each variable', () => {
    try {
      readStoreConfig({}, { MAX_VOLUME_SIZE: 'x', HEARTBEAT_INTERVAL: 'y', STORE_ID: 'bad id!' });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      const msg = (err as Error).message;
      for (const name of ['MAX_VOLUME_SIZE', 'HEARTBEAT_INTERVAL', 'STORE_ID']) expect(msg).toContain(name);
    }
  });

  it('uses the seed defaults where they meet our targets', () => {
    const s = readStoreConfig({}, PLAIN);
    expect(s.maxVolumeSize).toBe(4 * 1024 ** 3);
    expect(s.compactionThreshold).toBe(0.6);
    // Faster than the seed's 30 s on purpose: a hung store (no TCP reset) blocks the
    // writes of its placement groups until it is DOWN, 3 heartbeats (bench:store-down).
    expect(s.heartbeatIntervalMs).toBe(5_000);
    const d = readDirectoryConfig({}, PLAIN);
    // Faster than the seed's 10 s / 3 s on purpose: failover takes about LEADER_TIMEOUT
    // (docs/directory.md).
    expect(d.leaderTimeoutMs).toBe(2_000);
    expect(d.leaderHeartbeatIntervalMs).toBe(500);
    expect(d.storeDegradedAfterMs).toBe(10_000);
    expect(d.storeDownAfterMs).toBe(15_000);
    expect(d.followerSyncIntervalMs).toBe(500);
    const r = readReplicationConfig({}, PLAIN);
    expect([r.minReplicaCount, r.defaultReplicaCount, r.maxReplicaCount]).toEqual([2, 3, 5]);
    expect(r.nightlyAuditHour).toBe(2);
  });

  it('requires a certificate, key and CA unless INSECURE_PLAINTEXT=1, naming each variable', () => {
    expect(() => readStoreConfig({}, {})).toThrow(/TLS_CERT_FILE[\s\S]*TLS_KEY_FILE[\s\S]*TLS_CA_FILE/);
    expect(() =>
      readStoreConfig({}, { TLS_CERT_FILE: '/nonexistent', TLS_KEY_FILE: '/x', TLS_CA_FILE: '/y' }),
    ).toThrow(/TLS_CERT_FILE="\/nonexistent": cannot read it/);
    expect(readStoreConfig({}, PLAIN).security).toEqual({ mode: 'plaintext' });
  });

  it('reads the process identity from its certificate (SPIFFE URI SAN)', async () => {
    const env = await identityEnv({ role: 'store', id: 'store-7' });
    const s = readStoreConfig({}, { ...env, STORE_ID: 'store-7' });
    expect(s.security.mode === 'mtls' && s.security.identity).toEqual({ role: 'store', id: 'store-7' });
  });

  // ioredis reads client options from a URL's query string and lets them override the services'
  // own (internal/common/redis-client.ts): `?connectionName=x` brought back redis/ioredis#2099.
  it('refuses a REDIS_URL with "?" options in every service, naming it and not its password', () => {
    const url = 'redis://haystack:secret@127.0.0.1:6379/?connectionName=x';
    for (const read of [readDirectoryConfig, readReplicationConfig, readGatewayConfig]) {
      expect(() => read({}, { ...PLAIN, REDIS_URL: url })).toThrow(
        /REDIS_URL.*haystack:\*\*\*@.*without "\?" options/,
      );
      expect(() => read({}, { ...PLAIN, REDIS_URL: url })).not.toThrow(/secret/);
    }
    expect(() => newRedisClient(url, { lazyConnect: true })).toThrow(RangeError);
    expect(() => newRedisClient(url, { lazyConnect: true })).not.toThrow(/secret/);
    expect(readDirectoryConfig({}, { ...PLAIN, REDIS_URL: 'rediss://u:p@redis:6379' }).redisUrl).toBe(
      'rediss://u:p@redis:6379',
    );
    expect(readGatewayConfig({}, { ...PLAIN, REDIS_URL: '' }).redisUrl).toBe('');
  });

  it('checks relations between variables', () => {
    expect(() => readDirectoryConfig({}, { LEADER_TIMEOUT: '2', LEADER_HEARTBEAT_INTERVAL: '3' })).toThrow(
      /LEADER_HEARTBEAT_INTERVAL/,
    );
    expect(() => readReplicationConfig({}, { MIN_REPLICA_COUNT: '4' })).toThrow(/MIN_REPLICA_COUNT/);
    // A manager renewing every 9 s holds a lease valid for 8 s after each renewal: it would lapse.
    expect(() =>
      readReplicationConfig({}, { ...PLAIN, LEADER_TIMEOUT: '10s', LEADER_HEARTBEAT_INTERVAL: '9s' }),
    ).toThrow(/LEADER_HEARTBEAT_INTERVAL must be shorter than the lease's validity.*8000 ms/);
    expect(
      readReplicationConfig({}, { ...PLAIN, LEADER_TIMEOUT: '10s', LEADER_HEARTBEAT_INTERVAL: '7s' })
        .leaderHeartbeatIntervalMs,
    ).toBe(7_000);
    // The bench's old 3 s / 6 s beside the default 5 s heartbeat: every store DEGRADED between beats.
    expect(() =>
      readDirectoryConfig({}, { ...PLAIN, STORE_DEGRADED_AFTER: '3s', STORE_DOWN_AFTER: '6s' }),
    ).toThrow(/STORE_DEGRADED_AFTER \(3000 ms\) must be longer than HEARTBEAT_INTERVAL \(5000 ms\)/);
    expect(() =>
      readDirectoryConfig({}, { ...PLAIN, HEARTBEAT_INTERVAL: '2s', STORE_DEGRADED_AFTER: '2s' }),
    ).toThrow(/STORE_DEGRADED_AFTER/);
    const ok = readDirectoryConfig(
      {},
      { ...PLAIN, HEARTBEAT_INTERVAL: '300ms', STORE_DEGRADED_AFTER: '3s', STORE_DOWN_AFTER: '6s' },
    );
    expect([ok.storeDegradedAfterMs, ok.storeDownAfterMs]).toEqual([3_000, 6_000]);
  });

  it('reads PLACEMENT_EXPECTED_STORES (default 0: the replica count) and PLACEMENT_EXPECTED_WAIT (60s)', () => {
    const d = readDirectoryConfig({}, PLAIN);
    expect([d.placementExpectedStores, d.placementExpectedWaitMs]).toEqual([0, 60_000]);
    const set = readDirectoryConfig(
      {},
      { ...PLAIN, PLACEMENT_EXPECTED_STORES: '5', PLACEMENT_EXPECTED_WAIT: '2m' },
    );
    expect([set.placementExpectedStores, set.placementExpectedWaitMs]).toEqual([5, 120_000]);
    expect(() => readDirectoryConfig({}, { ...PLAIN, PLACEMENT_EXPECTED_STORES: '-1' })).toThrow(
      /PLACEMENT_EXPECTED_STORES/,
    );
    expect(() => readDirectoryConfig({}, { ...PLAIN, PLACEMENT_EXPECTED_WAIT: 'soon' })).toThrow(
      /PLACEMENT_EXPECTED_WAIT/,
    );
  });

  it('reads PLACEMENT_AUTO_BALANCE_AFTER (default 60s, 0 = off) and refuses a bad one', () => {
    expect(readDirectoryConfig({}, PLAIN).placementAutoBalanceAfterMs).toBe(60_000);
    expect(
      readDirectoryConfig({}, { ...PLAIN, PLACEMENT_AUTO_BALANCE_AFTER: '0' }).placementAutoBalanceAfterMs,
    ).toBe(0);
    expect(
      readDirectoryConfig({}, { ...PLAIN, PLACEMENT_AUTO_BALANCE_AFTER: '5m' }).placementAutoBalanceAfterMs,
    ).toBe(300_000);
    for (const bad of ['-1', 'later', '2d'])
      expect(() => readDirectoryConfig({}, { ...PLAIN, PLACEMENT_AUTO_BALANCE_AFTER: bad }), bad).toThrow(
        /PLACEMENT_AUTO_BALANCE_AFTER/,
      );
  });

  it('bounds a unary Put by MAX_PUT_SIZE (default 16MiB, at most 255MiB)', () => {
    expect(readGatewayConfig({}, { ...PLAIN }).maxPutSize).toBe(16 * 1024 * 1024);
    expect(readGatewayConfig({}, { ...PLAIN, MAX_PUT_SIZE: '1MiB' }).maxPutSize).toBe(1024 * 1024);
    expect(() => readGatewayConfig({}, { ...PLAIN, MAX_PUT_SIZE: '1GiB' })).toThrow(/MAX_PUT_SIZE/);
    expect(() => readGatewayConfig({}, { ...PLAIN, MAX_PUT_SIZE: 'big' })).toThrow(/MAX_PUT_SIZE/);
  });

  it('reads HEAP_GROWING_PERCENT of stores and gateways (default 300, 0 = V8 own) and refuses a bad one', () => {
    const store = (env: Record<string, string>) => readStoreConfig({}, { ...PLAIN, ...env });
    const gateway = (env: Record<string, string>) => readGatewayConfig({}, { ...PLAIN, ...env });
    for (const read of [store, gateway]) {
      expect(read({}).heapGrowingPercent).toBe(300);
      expect(read({ HEAP_GROWING_PERCENT: '0' }).heapGrowingPercent).toBe(0);
      expect(read({ HEAP_GROWING_PERCENT: '150' }).heapGrowingPercent).toBe(150);
      for (const bad of ['-1', '1001', 'lots', '2.5'])
        expect(() => read({ HEAP_GROWING_PERCENT: bad }), bad).toThrow(/HEAP_GROWING_PERCENT/);
    }
  });
});
