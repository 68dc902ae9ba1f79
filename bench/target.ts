// What the cluster benchmark runs against: a local cluster of real processes
// (Redis ×2, 3 directories, 3 stores, the replication manager, 2 gateways and
// Envoy, from test/helpers/cluster.ts) that it can kill and restart, or an
// existing deployment at HAYSTACK_URL (throughput and hit rate only).
import { mkdtempSync, rmSync } from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import type { EnvoyOptions } from '../internal/edge/envoy-config.js';
import { type GatewayStats, HaystackClient } from '../internal/sdk/index.js';
import { Cluster, type ClusterOptions } from '../test/helpers/cluster.js';
import { adminTlsEnv } from '../test/helpers/pki.js';
import { testToken } from '../test/helpers/tokens.js';

/** The production defaults of every timing FAST_ENV shortens ('' = use the built-in default). */
const DEFAULT_TIMINGS: Record<string, string> = {
  HEARTBEAT_INTERVAL: '',
  LEADER_TIMEOUT: '',
  LEADER_HEARTBEAT_INTERVAL: '',
  FOLLOWER_SYNC_INTERVAL: '',
  STATS_REPORT_INTERVAL: '',
  STORE_TIMEOUT: '',
  DIRECTORY_TIMEOUT: '',
  MIN_FREE_BYTES: '',
  // FAST_ENV's 3 s / 6 s are below the default 5 s heartbeat: every store would turn
  // DEGRADED between two heartbeats and the placement groups would never be created.
  STORE_DEGRADED_AFTER: '',
  STORE_DOWN_AFTER: '',
};

export interface Target {
  kind: 'local' | 'remote';
  url: string;
  client: HaystackClient;
  /** Settings the servers run with (for the report). */
  settings: Record<string, string>;
  /** Empties the blob cache (undefined: not possible on this target). */
  flushCache?: () => Promise<void>;
  /** Caps the cache's memory (LRU eviction beyond); 0 = no cap. */
  setCacheMemory?: (bytes: number) => Promise<void>;
  /** Exact hit and miss counts summed over every gateway. */
  cacheCounts(): Promise<{ hits: number; misses: number }>;
  cluster?: Cluster;
  close(): Promise<void>;
}

/** `--env KEY=VALUE` flags as an environment object (keys upper case); throws on anything else. */
export function parseEnvFlags(list: string[]): Record<string, string> {
  return Object.fromEntries(
    list.map((kv) => {
      const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(kv);
      if (!m) throw new Error(`--env: expected KEY=VALUE, got ${JSON.stringify(kv)}`);
      return [m[1] as string, m[2] as string];
    }),
  );
}

const keepData = () => process.env.HAYSTACK_KEEP_TEST_DATA === '1';

/**
 * Puts every file a bench cluster makes (volumes, Redis, certificates, tokens) under one
 * folder of this process, removed when it exits; HAYSTACK_KEEP_TEST_DATA=1 keeps it. The test
 * helpers name their folders under TMPDIR (tests get theirs from test/helpers/global-tmp.ts);
 * a bench left them in /tmp, about 430 MB per cluster, until the disk filled.
 */
async function removeDataKeepLogs(dir: string): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  await Promise.all(
    entries
      .filter((e) => e.isDirectory())
      .map((e) => rm(path.join(dir, e.name), { recursive: true, force: true, maxRetries: 3 })),
  );
}

function useBenchTmpDir(): void {
  if (process.env.HAYSTACK_BENCH_TMP) return;
  const dir = mkdtempSync(path.join(process.env.TMPDIR ?? os.tmpdir(), 'haystack-bench-'));
  process.env.HAYSTACK_BENCH_TMP = dir;
  process.env.TMPDIR = dir;
  process.on('exit', () => {
    if (keepData()) console.error(`bench data kept in ${dir}`);
    else {
      try {
        rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
      } catch (err) {
        console.error(`could not remove ${dir}: ${(err as Error).message}`);
      }
    }
  });
}

export async function localTarget(
  opts: {
    echo?: boolean;
    env?: Record<string, string>;
    envoy?: Partial<EnvoyOptions>;
    nodeArgs?: ClusterOptions['nodeArgs'];
  } = {},
): Promise<Target> {
  useBenchTmpDir();
  const unlimited = { maxTokens: 1_000_000, tokensPerFill: 1_000_000, fillIntervalMs: 1000 };
  const env = { LOG_LEVEL: 'warn', ...DEFAULT_TIMINGS, ...opts.env };
  // BENCH_MTLS=0 measures the same cluster with INSECURE_PLAINTEXT=1 (the cost of mTLS, issue 12).
  const mtls = process.env.BENCH_MTLS !== '0';
  // The gateways verify tokens of the test key (test/helpers/tokens.ts): the SDK and wrk carry an admin one.
  process.env.HAYSTACK_TOKEN ??= await testToken('admin', { ttlSec: 86_400 });
  if (mtls) {
    // The bench talks to gateways directly as an operator (HAYSTACK_TLS_*, read by the SDK).
    Object.assign(process.env, await adminTlsEnv());
  }
  const cluster = await Cluster.start({
    plaintext: !mtls,
    directories: 3,
    stores: 3,
    gateways: 2,
    cacheRedis: true,
    env,
    // The edge's per-client rate limits (100 uploads/s by default) are a policy, not
    // the system's capacity: lifted so the benchmark measures the stores and gateways.
    envoy: {
      uploadRateLimit: unlimited,
      deleteRateLimit: unlimited,
      readRateLimit: unlimited,
      ...opts.envoy,
    },
    echo: opts.echo ?? false,
    ...(opts.nodeArgs ? { nodeArgs: opts.nodeArgs } : {}),
  });
  // The operator's URL: FLUSHDB and CONFIG are not the service user's to run.
  const cacheUrl = cluster.cacheRedis?.adminUrl;
  if (!cacheUrl) throw new Error('the bench cluster has no cache Redis');
  const redis = new Redis(cacheUrl, { lazyConnect: false, maxRetriesPerRequest: 2 });
  const gatewayClients = () =>
    cluster.gateways.map(
      (g) => new HaystackClient({ url: mtls ? g.address : `http://${g.address}`, retries: 2 }),
    );
  let gws = gatewayClients();
  const client = new HaystackClient({ url: cluster.url });
  return {
    kind: 'local',
    url: cluster.url,
    client,
    settings: {
      ...Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v === '' ? '(default)' : v])),
      directories: '3',
      stores: '3',
      gateways: '2',
      'envoy rate limits': 'lifted',
      'cache redis': 'separate instance',
      transport: mtls ? 'mTLS (default)' : 'INSECURE_PLAINTEXT=1',
    },
    flushCache: async () => {
      await redis.flushdb();
    },
    setCacheMemory: async (bytes) => {
      await redis.config('SET', 'maxmemory-policy', 'allkeys-lru');
      await redis.config('SET', 'maxmemory', String(bytes));
    },
    cacheCounts: async () => {
      let hits = 0;
      let misses = 0;
      for (let attempt = 0; ; attempt++) {
        try {
          const all: GatewayStats[] = await Promise.all(gws.map((g) => g.gatewayStats({ timeoutMs: 5000 })));
          for (const s of all) {
            hits += s.gateway.hits;
            misses += s.gateway.misses;
          }
          return { hits, misses };
        } catch (err) {
          if (attempt >= 2) throw err;
          gws = gatewayClients();
        }
      }
    },
    cluster,
    close: async () => {
      redis.disconnect();
      await cluster.stop();
      // Volumes of a bench are hundreds of MB: a multi-round bench must not keep each round's.
      // The servers' logs (<name>.log) stay until the bench exits, for a round that failed.
      if (!keepData()) await removeDataKeepLogs(cluster.dataDir);
    },
  };
}

/**
 * An existing deployment. The cache can be flushed (for the miss phase) only when
 * BENCH_CACHE_REDIS_URL names its Redis; hit rates come from the cluster-wide
 * counters (flushed by each gateway every second, so read after a pause).
 */
export async function remoteTarget(url: string): Promise<Target> {
  const client = new HaystackClient({ url });
  const cacheUrl = process.env.BENCH_CACHE_REDIS_URL;
  const redis = cacheUrl ? new Redis(cacheUrl, { maxRetriesPerRequest: 2 }) : undefined;
  return {
    kind: 'remote',
    url,
    client,
    settings: { target: url },
    ...(redis
      ? {
          flushCache: async () => {
            // Only the blob entries: the deployment's other keys stay.
            let cursor = '0';
            do {
              const [next, keys] = await redis.scan(cursor, 'MATCH', 'haystack:blob:*', 'COUNT', 1000);
              if (keys.length > 0) await redis.del(...keys);
              cursor = next;
            } while (cursor !== '0');
          },
        }
      : {}),
    cacheCounts: async () => {
      await new Promise((r) => setTimeout(r, 1500));
      const s = await client.gatewayStats();
      return { hits: s.cluster.hits, misses: s.cluster.misses };
    },
    close: async () => {
      redis?.disconnect();
    },
  };
}
