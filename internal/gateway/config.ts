import { randomBytes } from 'node:crypto';
import { type Jwks, readJwksFile } from '../auth/keys.js';
import { REDIS_URL_OR_EMPTY, REDIS_URL_SHAPE, redactedRedisUrl } from '../common/redis-client.js';
import { COMMON_ENV_HELP, envReader, readServerConfig, type ServerConfig } from '../config/common.js';
import type { Env } from '../config/env.js';
import { HEAP_GROWING_ENV_HELP, readHeapGrowingPercent } from '../server/heap-growing.js';
import { list } from '../store/config.js';
import { MAX_PUT_SIZE_LIMIT } from './put-limit.js';

/** MAP_STALE_AFTER's default (ms); BACKFILL_SETTLE's default (replication/config.ts) is twice it. */
export const DEFAULT_MAP_STALE_AFTER_MS = 5_000;

/** Configuration of a gateway process (`haystack gateway`). */
export interface GatewayConfig extends ServerConfig {
  gatewayId: string;
  directories: string[];
  /** Empty: no cache. */
  redisUrl: string;
  /** HMAC key of Redis cache entries (shared by the gateways; empty: a random one per process). */
  cacheIntegrityKey: Buffer;
  cacheTtlMs: number;
  /** How long a delete's cache tombstone refuses fill leases of the id (ms). */
  cacheTombstoneMs: number;
  /** Longest a read-through fill's lease lasts (ms; liveness only, never what orders fills). */
  cacheLeaseMs: number;
  cacheMaxBlobSize: number;
  maxUploadSize: number;
  /** Largest content of a unary BlobService.Put: the whole message is in memory (larger: the Upload stream). */
  maxPutSize: number;
  /** auto: Redis when REDIS_URL is set, else in-process. */
  cacheBackend: 'auto' | 'redis' | 'memory' | 'none';
  cacheMemorySize: number;
  cacheWarnIntervalMs: number;
  /** Longest a Redis cache command may take before the read or write goes on without it. */
  cacheCommandTimeoutMs: number;
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
  /** Placement groups: members that must hold a write before it is acknowledged. */
  minReplicaCount: number;
  /**
   * Placement groups: a write or delete that did not reach every member of its group is
   * acknowledged only on a placement map confirmed current by the directory leader at
   * most this long ago (ms). The managers' BACKFILL_SETTLE must exceed it.
   */
  mapStaleAfterMs: number;
  /** Public keys that verify bearer tokens (AUTH_JWKS_FILE); undefined: only operator certificates. */
  authJwks: Jwks | undefined;
  /** The AUTH_JWKS_FILE path ('' when unset), re-read every authJwksReloadMs (0: never). */
  authJwksFile: string;
  authJwksReloadMs: number;
  /** Signed-URL HMAC keys (URL_SIGNING_KEYS): the first signs, each verifies. */
  urlSigningKeys: Buffer[];
  /** GET /blobs/{id} without token or signature is served (PUBLIC_READS). */
  publicReads: boolean;
  /** HEAP_GROWING_PERCENT: V8's heap growing factor − 1, in percent; 0: V8's own (server/heap-growing.ts). */
  heapGrowingPercent: number;
}

export const GATEWAY_ENV_HELP = `${COMMON_ENV_HELP}
  GATEWAY_ID             instance id (default gateway-<port>)
  DIRECTORY_ADDRS        comma-separated directory host:port list
  REDIS_URL              Redis for the blob cache (empty: an in-process cache)
  CACHE_INTEGRITY_KEY    hex or base64 key (at least 32 bytes) that MACs every Redis cache entry;
                         every gateway sharing the cache needs the same (default: random per process,
                         so gateways do not share entries)
  CACHE_TTL              cache entry lifetime (default 3600s)
  CACHE_MAX_BLOB_SIZE    larger blobs are not cached (default 1MiB)
  CACHE_TOMBSTONE_TTL    a delete refuses read-through fill leases of the id this long (default 60s);
                         fills are ordered after deletes by their leases, not by this
  CACHE_LEASE_TTL        a cache miss's fill lease lasts at most this long: a read slower than it
                         does not fill, one whose gateway died blocks fills of the id this long;
                         so does a write's push lease, taken when its upload starts (default 10s)
  MAX_UPLOAD_SIZE        larger uploads are refused (default 100MiB)
  MAX_PUT_SIZE           largest blob in one unary Put, which the gateway holds in memory
                         whole; larger: RESOURCE_EXHAUSTED, use the Upload stream (default 16MiB)
  CACHE_BACKEND          auto|redis|memory|none (default auto: redis when REDIS_URL is set)
  CACHE_MEMORY_SIZE      byte budget of the in-process cache (default 256MiB)
  CACHE_WARN_INTERVAL    at most one "cache unavailable" warning per interval (default 30s)
  CACHE_COMMAND_TIMEOUT  a Redis cache command taking longer counts as an outage (default 500ms)
  STORE_TIMEOUT          wait for a store before failing over to the next replica (default 5s)
  DIRECTORY_TIMEOUT      deadline of one attempt of a directory call (default 5s)
  DIRECTORY_RETRY        deadline of a directory call with its retries (default 15s)
  HTTP_CACHE_CONTROL     Cache-Control of GET /blobs/{id} (default "public, max-age=3600")
  UI_DIR                 static files served under /ui/ (default: the built dashboard)
  REPLICATION_ADDRS      replication managers to report cache-served reads to (access heat)
  STATS_REPORT_INTERVAL  access report period (default 60s)
  MIN_REPLICA_COUNT      placement groups: a write is acknowledged once at least this many
                         members hold it durably (every member that is up must; default 2)
  MAP_STALE_AFTER        placement groups: a write or delete that skipped a member (JOINING and
                         DOWN) is acknowledged only if the member still is in a placement map the
                         directory leader confirmed current at most this long ago, else UNAVAILABLE
                         (the retry includes it); the replication managers' BACKFILL_SETTLE must be
                         longer (default 5s)
  AUTH_JWKS_FILE         JWKS (JSON) of the 1-4 public ES256 keys that verify bearer tokens
                         (haystack token keygen); unset: only operator certificates are accepted
  AUTH_JWKS_RELOAD_INTERVAL  re-read AUTH_JWKS_FILE this often: a key added or removed takes
                         effect without a restart; an invalid file keeps the last good keys
                         (default 10s; 0: never)
  URL_SIGNING_KEYS       comma-separated keys (hex or base64, at least 32 bytes each) of signed
                         read URLs; the first signs, every one verifies (rotation); every gateway
                         needs the same (default: random per process)
  PUBLIC_READS           1: GET /blobs/{id} without a token or signature is served (default 0)
${HEAP_GROWING_ENV_HELP}`;

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
    redisUrl: r.matching(
      'REDIS_URL',
      '',
      REDIS_URL_OR_EMPTY,
      `${REDIS_URL_SHAPE}, or empty`,
      redactedRedisUrl,
    ),
    cacheIntegrityKey: integrityKey(r),
    cacheTtlMs: r.duration('CACHE_TTL', 3_600_000, { minMs: 1000 }),
    cacheTombstoneMs: r.duration('CACHE_TOMBSTONE_TTL', 60_000, { minMs: 200, maxMs: 86_400_000 }),
    cacheLeaseMs: r.duration('CACHE_LEASE_TTL', 10_000, { minMs: 100, maxMs: 3_600_000 }),
    cacheMaxBlobSize: r.size('CACHE_MAX_BLOB_SIZE', 1024 * 1024),
    maxUploadSize: r.size('MAX_UPLOAD_SIZE', 100 * 1024 * 1024, { min: 1 }),
    maxPutSize: r.size('MAX_PUT_SIZE', 16 * 1024 * 1024, { min: 1, max: MAX_PUT_SIZE_LIMIT }),
    cacheBackend: r.matching(
      'CACHE_BACKEND',
      'auto',
      /^(auto|redis|memory|none)$/,
      'auto, redis, memory or none',
    ) as GatewayConfig['cacheBackend'],
    cacheMemorySize: r.size('CACHE_MEMORY_SIZE', 256 * 1024 * 1024),
    cacheWarnIntervalMs: r.duration('CACHE_WARN_INTERVAL', 30_000, { minMs: 0 }),
    cacheCommandTimeoutMs: r.duration('CACHE_COMMAND_TIMEOUT', 500, { minMs: 10, maxMs: 60_000 }),
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
    minReplicaCount: r.int('MIN_REPLICA_COUNT', 2, { min: 1, max: 16 }),
    mapStaleAfterMs: r.duration('MAP_STALE_AFTER', DEFAULT_MAP_STALE_AFTER_MS, {
      minMs: 100,
      maxMs: 600_000,
    }),
    authJwks: jwks(r),
    authJwksFile: r.string('AUTH_JWKS_FILE', ''),
    authJwksReloadMs: r.duration('AUTH_JWKS_RELOAD_INTERVAL', 10_000, { minMs: 0, maxMs: 86_400_000 }),
    urlSigningKeys: urlKeys(r),
    publicReads: r.bool('PUBLIC_READS', false),
    heapGrowingPercent: readHeapGrowingPercent(r),
  };
  if (cfg.cacheBackend === 'redis' && !cfg.redisUrl) r.problem('CACHE_BACKEND=redis needs REDIS_URL');
  r.done();
  return cfg;
}

/** CACHE_INTEGRITY_KEY: ≥ 32 bytes as hex or base64; unset: 32 random bytes. */
function integrityKey(r: ReturnType<typeof envReader>): Buffer {
  const raw = r.string('CACHE_INTEGRITY_KEY', '');
  if (raw === '') return randomBytes(32);
  return secretKey(r, 'CACHE_INTEGRITY_KEY', raw);
}

/** A ≥ 32-byte key as hex or base64 (a problem naming `name` otherwise). */
function secretKey(r: ReturnType<typeof envReader>, name: string, raw: string): Buffer {
  const key = /^[0-9a-fA-F]+$/.test(raw) ? Buffer.from(raw, 'hex') : Buffer.from(raw, 'base64');
  if (key.length < 32) r.problem(`${name}: expected at least 32 bytes as hex or base64, got ${key.length}`);
  return key;
}

/** URL_SIGNING_KEYS: comma-separated keys; unset: one random key (URLs only valid on this gateway). */
function urlKeys(r: ReturnType<typeof envReader>): Buffer[] {
  const raw = list(r.string('URL_SIGNING_KEYS', ''));
  if (raw.length === 0) return [randomBytes(32)];
  if (raw.length > 4) r.problem(`URL_SIGNING_KEYS: ${raw.length} keys; at most 4`);
  return raw.map((k) => secretKey(r, 'URL_SIGNING_KEYS', k));
}

/** AUTH_JWKS_FILE, read and checked now (a bad file stops the start naming the variable). */
function jwks(r: ReturnType<typeof envReader>): Jwks | undefined {
  const file = r.string('AUTH_JWKS_FILE', '');
  if (file === '') return undefined;
  try {
    return readJwksFile(file);
  } catch (err) {
    r.problem(`AUTH_JWKS_FILE: ${(err as Error).message}`);
    return undefined;
  }
}
