import { COMMON_ENV_HELP, envReader, readServerConfig, type ServerConfig } from '../config/common.js';
import type { Env } from '../config/env.js';
import { list } from '../store/config.js';

/** Configuration of a gateway process (`haystack gateway`). */
export interface GatewayConfig extends ServerConfig {
  gatewayId: string;
  directories: string[];
  /** Empty: no cache. */
  redisUrl: string;
  cacheTtlMs: number;
  cacheMaxBlobSize: number;
  maxUploadSize: number;
  /** auto: Redis when REDIS_URL is set, else in-process. */
  cacheBackend: 'auto' | 'redis' | 'memory' | 'none';
  cacheMemorySize: number;
  cacheWarnIntervalMs: number;
  /** Longest wait for the next message of a store Read before failing over to another replica. */
  storeTimeoutMs: number;
  /** Deadline of one attempt of a directory call. */
  directoryTimeoutMs: number;
  /** Deadline of a directory call with its retries (across instances, through elections). */
  directoryRetryMs: number;
  /** Cache-Control of GET /blobs/{id}. */
  httpCacheControl: string;
  /** Static files served under /ui/ (the dashboard); empty: the built web/ when present. */
  uiDir: string;
  /** Replication managers to report cache-served reads to (empty: none). */
  replicationAddrs: string[];
  statsReportIntervalMs: number;
}

export const GATEWAY_ENV_HELP = `${COMMON_ENV_HELP}
  GATEWAY_ID             instance id (default gateway-<port>)
  DIRECTORY_ADDRS        comma-separated directory host:port list
  REDIS_URL              Redis for the blob cache (empty: an in-process cache)
  CACHE_TTL              cache entry lifetime (default 3600s)
  CACHE_MAX_BLOB_SIZE    larger blobs are not cached (default 1MiB)
  MAX_UPLOAD_SIZE        larger uploads are refused (default 100MiB)
  CACHE_BACKEND          auto|redis|memory|none (default auto: redis when REDIS_URL is set)
  CACHE_MEMORY_SIZE      byte budget of the in-process cache (default 256MiB)
  CACHE_WARN_INTERVAL    at most one "cache unavailable" warning per interval (default 30s)
  STORE_TIMEOUT          wait for a store before failing over to the next replica (default 5s)
  DIRECTORY_TIMEOUT      deadline of one attempt of a directory call (default 5s)
  DIRECTORY_RETRY        deadline of a directory call with its retries (default 15s)
  HTTP_CACHE_CONTROL     Cache-Control of GET /blobs/{id} (default "public, max-age=3600")
  UI_DIR                 static files served under /ui/ (default: the built dashboard)
  REPLICATION_ADDRS      replication managers to report cache-served reads to (access heat)
  STATS_REPORT_INTERVAL  access report period (default 60s)`;

export function readGatewayConfig(flags: { listen?: string }, env: Env = process.env): GatewayConfig {
  const r = envReader(env);
  const server = readServerConfig(r, '127.0.0.1:8100', flags);
  const port = server.listen.split(':').pop();
  const cfg: GatewayConfig = {
    ...server,
    gatewayId: r.matching(
      'GATEWAY_ID',
      `gateway-${port}`,
      /^[A-Za-z0-9._-]{1,64}$/,
      'an id of 1-64 characters [A-Za-z0-9._-]',
    ),
    directories: list(r.string('DIRECTORY_ADDRS', '')),
    redisUrl: r.matching('REDIS_URL', '', /^(rediss?:\/\/.*)?$/, 'a redis:// URL or empty'),
    cacheTtlMs: r.duration('CACHE_TTL', 3_600_000, { minMs: 1000 }),
    cacheMaxBlobSize: r.size('CACHE_MAX_BLOB_SIZE', 1024 * 1024),
    maxUploadSize: r.size('MAX_UPLOAD_SIZE', 100 * 1024 * 1024, { min: 1 }),
    cacheBackend: r.matching(
      'CACHE_BACKEND',
      'auto',
      /^(auto|redis|memory|none)$/,
      'auto, redis, memory or none',
    ) as GatewayConfig['cacheBackend'],
    cacheMemorySize: r.size('CACHE_MEMORY_SIZE', 256 * 1024 * 1024),
    cacheWarnIntervalMs: r.duration('CACHE_WARN_INTERVAL', 30_000, { minMs: 0 }),
    storeTimeoutMs: r.duration('STORE_TIMEOUT', 5_000, { minMs: 10, maxMs: 600_000 }),
    directoryTimeoutMs: r.duration('DIRECTORY_TIMEOUT', 5_000, { minMs: 10, maxMs: 600_000 }),
    directoryRetryMs: r.duration('DIRECTORY_RETRY', 15_000, { minMs: 10, maxMs: 600_000 }),
    httpCacheControl: r.matching(
      'HTTP_CACHE_CONTROL',
      'public, max-age=3600',
      /^[\x20-\x7e]{1,200}$/,
      'a Cache-Control header value',
    ),
    uiDir: r.string('UI_DIR', ''),
    replicationAddrs: list(r.string('REPLICATION_ADDRS', '')),
    statsReportIntervalMs: r.duration('STATS_REPORT_INTERVAL', 60_000, { minMs: 100 }),
  };
  if (cfg.cacheBackend === 'redis' && !cfg.redisUrl) r.problem('CACHE_BACKEND=redis needs REDIS_URL');
  r.done();
  return cfg;
}
