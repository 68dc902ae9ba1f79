import { existsSync } from 'node:fs';
import path from 'node:path';
import { createServiceImplSpec } from '@connectrpc/connect';
import { Counter, Gauge } from 'prom-client';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { JwksFile } from '../auth/jwks-reload.js';
import { TokenVerifier } from '../auth/token-verify.js';
import { type BlobCache, type CacheObserver, hitRate, NoCache } from '../cache/blob-cache.js';
import { MemoryBlobCache } from '../cache/memory-cache.js';
import { RedisBlobCache } from '../cache/redis-cache.js';
import { PROJECT_ROOT } from '../cli/processes.js';
import { DirectoryClient } from '../directory/client.js';
import { AccessReporter, ReporterKind } from '../heat-client/access-reporter.js';
import { ClientPool } from '../rpc/clients.js';
import { redisTls } from '../security/redis-tls.js';
import { callerOfRequest } from '../server/caller.js';
import { setHeapGrowingPercent } from '../server/heap-growing.js';
import type { Logger } from '../server/logger.js';
import { Metrics } from '../server/metrics.js';
import { runServerProcess } from '../server/run.js';
import type { HttpRoute } from '../server/server.js';
import { GatewayAccess } from './access.js';
import { BlobGateway } from './blobs.js';
import type { GatewayConfig } from './config.js';
import { directoryApi, leaderCommitIndex } from './directory.js';
import { blobRoute, staticRoute } from './http.js';
import { jwksRoute } from './http-jwks.js';
import type { ReadAccess } from './http-read-access.js';
import { uploadRoute } from './http-upload.js';
import { PlacementView } from './placement-view.js';
import { putHandlerOptions, putMessageLimit } from './put-limit.js';
import { blobService } from './service.js';
import { UrlSigner } from './url-signer.js';

export function createCache(
  cfg: GatewayConfig,
  log: Logger,
  observe: CacheObserver | undefined,
  leaderCommitIndex: () => Promise<bigint>,
): BlobCache {
  const backend = cfg.cacheBackend === 'auto' ? (cfg.redisUrl ? 'redis' : 'memory') : cfg.cacheBackend;
  switch (backend) {
    case 'redis':
      return new RedisBlobCache({
        url: cfg.redisUrl,
        tls: redisTls(cfg.redisUrl, cfg.security),
        ttlMs: cfg.cacheTtlMs,
        tombstoneMs: cfg.cacheTombstoneMs,
        leaseMs: cfg.cacheLeaseMs,
        maxBlobSize: cfg.cacheMaxBlobSize,
        warnIntervalMs: cfg.cacheWarnIntervalMs,
        commandTimeoutMs: cfg.cacheCommandTimeoutMs,
        integrityKey: cfg.cacheIntegrityKey,
        leaderCommitIndex,
        log,
        ...(observe ? { observe } : {}),
      });
    case 'memory':
      if (cfg.cacheBackend === 'auto')
        log.warn('REDIS_URL not set: the blob cache is in-process (not shared)');
      return new MemoryBlobCache({
        ttlMs: cfg.cacheTtlMs,
        tombstoneMs: cfg.cacheTombstoneMs,
        leaseMs: cfg.cacheLeaseMs,
        maxBlobSize: cfg.cacheMaxBlobSize,
        maxBytes: cfg.cacheMemorySize,
        ...(observe ? { observe } : {}),
      });
    default:
      return new NoCache(observe);
  }
}

/** `haystack gateway`: a stateless BlobService process. */
export async function runGateway(cfg: GatewayConfig): Promise<void> {
  await runServerProcess('gateway', cfg.gatewayId, cfg, async (log) => {
    setHeapGrowingPercent(cfg.heapGrowingPercent, log);
    const metrics = new Metrics({ service: 'gateway', instance: cfg.gatewayId });
    const reg = [metrics.registry];
    const lookups = new Counter({
      name: 'haystack_gateway_cache_lookups_total',
      help: 'Blob cache lookups by result (hit or miss)',
      labelNames: ['result'],
      registers: reg,
    });
    const bytes = new Counter({
      name: 'haystack_gateway_bytes_total',
      help: 'Blob bytes through the gateway (in: uploads, out: downloads)',
      labelNames: ['direction'],
      registers: reg,
    });
    const failovers = new Counter({
      name: 'haystack_gateway_replica_failovers_total',
      help: 'Reads that moved to another replica after a store failed or stalled',
      registers: reg,
    });
    const coldReads = new Counter({
      name: 'haystack_gateway_cold_reads_total',
      help: 'Reads of erasure-coded (cold) blobs by path: systematic (data shards only) or degraded (decoded from k shards)',
      labelNames: ['path'],
      registers: reg,
    });
    const coldBytes = new Counter({
      name: 'haystack_gateway_cold_read_bytes_total',
      help: 'Bytes of cold blobs read from shards, by path (systematic or degraded)',
      labelNames: ['path'],
      registers: reg,
    });
    const fillsDropped = new Counter({
      name: 'haystack_gateway_cache_fills_dropped_total',
      help: 'Read-through cache fills and write pushes not cached, by reason (lease_lost, write_lease_lost, lease_held, tombstone, before_epoch, epoch_changed, index_missing)',
      labelNames: ['reason'],
      registers: reg,
    });
    const ackRefusals = new Counter({
      name: 'haystack_gateway_ack_refusals_total',
      help: 'Placement-group writes and deletes that did not reach every member, refused at ack time (UNAVAILABLE, retried by clients), by reason (group_changed: a member they missed is back or joined; map_stale: the map could not be confirmed current within MAP_STALE_AFTER)',
      labelNames: ['reason'],
      registers: reg,
    });
    const directoryClient = new DirectoryClient({
      addresses: cfg.directories,
      attemptTimeoutMs: cfg.directoryTimeoutMs,
      deadlineMs: cfg.directoryRetryMs,
    });
    const directory = directoryApi(directoryClient);
    const cache = createCache(
      cfg,
      log,
      (e, reason) =>
        e === 'fill_dropped' ? fillsDropped.inc({ reason: reason ?? 'unknown' }) : lookups.inc({ result: e }),
      () => leaderCommitIndex(directory),
    );
    new Gauge({
      name: 'haystack_gateway_cache_hit_ratio',
      help: 'Cache hits / lookups since the gateway started',
      registers: reg,
      async collect() {
        this.set(hitRate((await cache.stats()).local));
      },
    });
    new Gauge({
      name: 'haystack_gateway_cache_available',
      help: '1 while the cache answers, 0 while it is bypassed',
      registers: reg,
      collect() {
        this.set(cache.available() ? 1 : 0);
      },
    });

    const pool = new ClientPool();
    // Reads served from the cache never reach a store: the gateway reports them.
    const reporter =
      cfg.replicationAddrs.length > 0
        ? new AccessReporter({
            reporterId: cfg.gatewayId,
            kind: ReporterKind.GATEWAY,
            managers: cfg.replicationAddrs,
            intervalMs: cfg.statsReportIntervalMs,
            log,
            pool,
          })
        : undefined;
    reporter?.start();
    // The placement map, followed so reads and writes need no directory call.
    const view = new PlacementView(
      (req, signal) => directoryClient.watchMetadata(req, signal),
      cfg.gatewayId,
      log,
    );
    view.start();
    const gateway = new BlobGateway({
      directory,
      placement: {
        view,
        stores: (s) => pool.store(s),
        readyTimeoutMs: cfg.directoryRetryMs,
        minReplicas: cfg.minReplicaCount,
        mapStaleAfterMs: cfg.mapStaleAfterMs,
        onAckRefused: (reason) => ackRefusals.inc({ reason }),
      },
      store: (s) => pool.store(s),
      cache,
      log,
      maxUploadSize: cfg.maxUploadSize,
      storeTimeoutMs: cfg.storeTimeoutMs,
      onFailover: () => failovers.inc(),
      onBytes: (direction, n) => bytes.inc({ direction }, n),
      ...(reporter ? { onCacheRead: (id: string) => reporter.count(id) } : {}),
      onColdRead: (id, r) => {
        const path = r.degraded ? 'degraded' : 'systematic';
        coldReads.inc({ path });
        coldBytes.inc({ path }, r.bytes);
        // Shard reads are not the blob's reads at any store: the gateway reports the heat.
        reporter?.count(id);
      },
    });

    if (!cfg.authJwks) log.warn('AUTH_JWKS_FILE not set: no token is accepted, only operator certificates');
    const verifier = cfg.authJwks ? new TokenVerifier(cfg.authJwks) : undefined;
    const jwksFile = cfg.authJwks ? new JwksFile(cfg.authJwksFile, cfg.authJwks) : undefined;
    const reloads = new Counter({
      name: 'haystack_gateway_jwks_reloads_total',
      help: 'AUTH_JWKS_FILE re-reads that changed the keys (changed) or were refused (invalid: the last good keys stay)',
      labelNames: ['result'],
      registers: reg,
    });
    if (jwksFile && verifier && cfg.authJwksReloadMs > 0) {
      jwksFile.start(cfg.authJwksReloadMs, (r) => {
        reloads.inc({ result: r.kind });
        if (r.kind === 'changed') {
          verifier.use(r.jwks);
          log.info({ kids: r.kids }, 'token keys reloaded from AUTH_JWKS_FILE');
        } else log.error({ err: r.why }, 'AUTH_JWKS_FILE is not a valid JWKS: keeping the last good keys');
      });
    }
    const access = new GatewayAccess(verifier);
    const urls = new UrlSigner(cfg.urlSigningKeys);
    const readAccess: ReadAccess = {
      access,
      urls,
      publicReads: cfg.publicReads,
      operator: (req) => {
        const c = callerOfRequest(req, cfg.security);
        return c.transport === 'mtls' && c.identity?.role === 'admin';
      },
    };
    const httpRoutes: HttpRoute[] = [
      jwksRoute(() => jwksFile?.current),
      uploadRoute(gateway, log, readAccess),
      blobRoute(gateway, log, cfg.httpCacheControl, readAccess),
    ];
    const uiDir = cfg.uiDir || path.join(PROJECT_ROOT, 'dist/web');
    if (existsSync(path.join(uiDir, 'index.html'))) httpRoutes.push(staticRoute('/ui/', uiDir));
    else if (cfg.uiDir) log.warn({ uiDir }, 'UI_DIR has no index.html: the dashboard is not served');

    const impl = blobService({
      gateway,
      cache,
      gatewayId: cfg.gatewayId,
      cacheTtlMs: cfg.cacheTtlMs,
      access,
      urls,
      maxPutSize: cfg.maxPutSize,
    });
    return {
      metrics,
      services: [
        {
          desc: BlobService,
          register: (router) =>
            router
              .service(BlobService, impl)
              // Put again with its own limit: the router keeps the last handler of a path.
              .rpc(BlobService.method.put, impl.put, putHandlerOptions(cfg.maxPutSize)),
          // Blob bytes again: plain gRPC from Envoy skips connect-node's per-call layer.
          direct: createServiceImplSpec<typeof BlobService>(BlobService, impl),
          messageLimits: { Put: putMessageLimit(cfg.maxPutSize) },
        },
      ],
      httpRoutes,
      onDrain: async () => {
        view.stop();
        jwksFile?.stop();
        await reporter?.stop();
      },
      onClose: () => cache.close(),
    };
  });
}
