import { DirectoryService } from '../../gen/haystack/v1/directory_pb.js';
import { MemoryLeaseStore } from '../lease/memory-lease-store.js';
import { RedisLeaseStore } from '../lease/redis-lease-store.js';
import { redisTls } from '../security/redis-tls.js';
import { Metrics } from '../server/metrics.js';
import { runServerProcess } from '../server/run.js';
import type { DirectoryConfig } from './config.js';
import { leaseMarginMs } from './leadership.js';
import { DirectoryMetrics } from './metrics.js';
import { DirectoryNode } from './node.js';
import { PlacementKeeper } from './placement-keeper.js';
import { DirectoryHandlers } from './service.js';
import { StoreRegistry } from './stores.js';

/** `haystack directory`: one instance of the directory cluster. */
export async function runDirectory(cfg: DirectoryConfig): Promise<void> {
  let node: DirectoryNode | undefined;
  let stores: StoreRegistry | undefined;
  let placement: PlacementKeeper | undefined;
  const server = await runServerProcess('directory', cfg.directoryId, cfg, async (log) => {
    const metrics = new Metrics({ service: 'directory', instance: cfg.directoryId });
    const dm = new DirectoryMetrics(
      metrics,
      () => node,
      () => stores,
    );
    if (cfg.redisUrl === '') {
      log.warn(
        { peers: cfg.peers },
        cfg.peers.length > 1
          ? 'REDIS_URL is empty: in-process lease; only the first of DIRECTORY_PEERS leads and there is no failover'
          : 'REDIS_URL is empty: in-process lease (single directory)',
      );
    }
    const leaseStore =
      cfg.redisUrl === ''
        ? new MemoryLeaseStore()
        : new RedisLeaseStore({
            url: cfg.redisUrl,
            tls: redisTls(cfg.redisUrl, cfg.security),
            // As long as a renewal can still help: the lease's validity.
            commandTimeoutMs: cfg.leaderTimeoutMs - leaseMarginMs(cfg.leaderTimeoutMs),
            connectTimeoutMs: Math.round(cfg.leaderHeartbeatIntervalMs * 0.8),
          });
    let handlers: DirectoryHandlers | undefined;
    node = await DirectoryNode.create({
      cfg,
      log,
      leaseStore,
      selfAddress: cfg.advertise,
      onFatal: (err) => {
        log.fatal({ err }, 'metadata log failed: exiting so no acknowledgement rests on a broken disk');
        log.flush?.();
        process.exit(70);
      },
      hooks: {
        onLeaderReady: () => {
          dm.leaderChanges.inc();
          stores?.onLeaderReady();
          placement?.onLeaderReady();
        },
        onLeaderStop: (reason) => {
          stores?.onLeaderStop(reason);
          placement?.onLeaderStop();
          handlers?.onLeaderStop();
        },
        onApplied: (entry) => stores?.onApplied(entry),
        onCommitted: (seconds) => {
          dm.commits.inc();
          dm.commitSeconds.observe(seconds);
        },
      },
    });
    stores = new StoreRegistry(node);
    placement = new PlacementKeeper(node, stores);
    handlers = new DirectoryHandlers(node, stores, placement);
    const impl = handlers.impl();
    return {
      metrics,
      services: [{ desc: DirectoryService, register: (router) => router.service(DirectoryService, impl) }],
      onDrain: async () => {
        // Hand leadership over at once instead of letting the lease run out.
        await node?.stop();
      },
    };
  });
  if (node && server.port !== Number(cfg.advertise.split(':').pop()) && cfg.peers.length === 0) {
    // Listening on port 0 without peers: advertise the real port.
    (node as { selfAddress: string }).selfAddress = `${server.host}:${server.port}`;
  }
  node?.start();
}
