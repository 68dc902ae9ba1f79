import { existsSync } from 'node:fs';
import path from 'node:path';
import { createServiceImplSpec } from '@connectrpc/connect';
import { Counter, Gauge } from 'prom-client';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { type BlobCache, type CacheObserver, hitRate, NoCache } from '../cache/blob-cache.js';
import { MemoryBlobCache } from '../cache/memory-cache.js';
import { RedisBlobCache } from '../cache/redis-cache.js';
import { PROJECT_ROOT } from '../cli/processes.js';
import { DirectoryClient } from '../directory/client.js';
import { AccessReporter, ReporterKind } from '../replication/access-reporter.js';
import { ClientPool } from '../rpc/clients.js';
import type { Logger } from '../server/logger.js';
import { Metrics } from '../server/metrics.js';
import { runServerProcess } from '../server/run.js';
import type { HttpRoute } from '../server/server.js';
import { BlobGateway } from './blobs.js';
import type { GatewayConfig } from './config.js';
import { directoryApi } from './directory.js';
import { blobRoute, staticRoute } from './http.js';
import { blobService } from './service.js';

export function createCache(cfg: GatewayConfig, log: Logger, observe?: CacheObserver): BlobCache {
  const backend = cfg.cacheBackend === 'auto' ? (cfg.redisUrl ? 'redis' : 'memory') : cfg.cacheBackend;
  switch (backend) {
    case 'redis':
      return new RedisBlobCache({
        url: cfg.redisUrl,
        ttlMs: cfg.cacheTtlMs,
        maxBlobSize: cfg.cacheMaxBlobSize,
        warnIntervalMs: cfg.cacheWarnIntervalMs,
        log,
        ...(observe ? { observe } : {}),
      });
    case 'memory':
      if (cfg.cacheBackend === 'auto')
        log.warn('REDIS_URL not set: the blob cache is in-process (not shared)');
      return new MemoryBlobCache({
        ttlMs: cfg.cacheTtlMs,
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
    const cache = createCache(cfg, log, (e) => lookups.inc({ result: e }));
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
    const directory = directoryApi(
      new DirectoryClient({
        addresses: cfg.directories,
        attemptTimeoutMs: cfg.directoryTimeoutMs,
        deadlineMs: cfg.directoryRetryMs,
      }),
    );
    const gateway = new BlobGateway({
      directory,
      store: (address) => pool.client(StoreService, address),
      cache,
      log,
      maxUploadSize: cfg.maxUploadSize,
      storeTimeoutMs: cfg.storeTimeoutMs,
      onFailover: () => failovers.inc(),
      onBytes: (direction, n) => bytes.inc({ direction }, n),
      ...(reporter ? { onCacheRead: (id: string) => reporter.count(id) } : {}),
    });

    const httpRoutes: HttpRoute[] = [blobRoute(gateway, log, cfg.httpCacheControl)];
    const uiDir = cfg.uiDir || path.join(PROJECT_ROOT, 'dist/web');
    if (existsSync(path.join(uiDir, 'index.html'))) httpRoutes.push(staticRoute('/ui/', uiDir));
    else if (cfg.uiDir) log.warn({ uiDir }, 'UI_DIR has no index.html: the dashboard is not served');

    const impl = blobService({ gateway, cache, gatewayId: cfg.gatewayId, cacheTtlMs: cfg.cacheTtlMs });
    return {
      metrics,
      services: [
        {
          desc: BlobService,
          register: (router) => router.service(BlobService, impl),
          // Blob bytes again: plain gRPC from Envoy skips connect-node's per-call layer.
          direct: createServiceImplSpec<typeof BlobService>(BlobService, impl),
        },
      ],
      httpRoutes,
      onDrain: async () => {
        await reporter?.stop();
      },
      onClose: () => cache.close(),
    };
  });
}
