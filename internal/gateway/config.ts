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
}

export const GATEWAY_ENV_HELP = `${COMMON_ENV_HELP}
  GATEWAY_ID             instance id (default gateway-<port>)
  DIRECTORY_ADDRS        comma-separated directory host:port list
  REDIS_URL              Redis for the blob cache (empty: no cache)
  CACHE_TTL              cache entry lifetime (default 3600s)
  CACHE_MAX_BLOB_SIZE    larger blobs are not cached (default 1MiB)
  MAX_UPLOAD_SIZE        larger uploads are refused (default 100MiB)`;

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
  };
  r.done();
  return cfg;
}
