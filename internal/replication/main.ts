import { ReplicationService } from '../../gen/haystack/v1/replication_pb.js';
import { LeaseKeeper } from '../lease/lease-keeper.js';
import { systemClock } from '../lease/lease-store.js';
import { leaseStoreLogging } from '../lease/lease-store-log.js';
import { RedisLeaseStore } from '../lease/redis-lease-store.js';
import { ClientPool } from '../rpc/clients.js';
import { redisTls } from '../security/redis-tls.js';
import { ServingStatus } from '../server/health.js';
import { Metrics } from '../server/metrics.js';
import { runServerProcess } from '../server/run.js';
import { managerLeaseMarginMs, managerLeaseValidityMs, type ReplicationConfig } from './config.js';
import { DirectoryApi } from './directory-api.js';
import { ReplicationManager } from './manager.js';
import { replicationMetrics } from './metrics.js';
import { replicationService } from './service.js';

/** `haystack replication`: one replication manager instance. */
export async function runReplication(cfg: ReplicationConfig): Promise<void> {
  let setServing: (active: boolean) => void = () => {};
  let closing = false;
  let manager: ReplicationManager | undefined;
  const server = await runServerProcess('replication', cfg.managerId, cfg, async (log) => {
    const metrics = new Metrics({ service: 'replication', instance: cfg.managerId });
    const leaseStore = new RedisLeaseStore({
      url: cfg.redisUrl,
      tls: redisTls(cfg.redisUrl, cfg.security),
      // As long as a renewal can still help: the lease's validity.
      commandTimeoutMs: managerLeaseValidityMs(cfg.leaderTimeoutMs),
      connectTimeoutMs: Math.floor(cfg.leaderHeartbeatIntervalMs / 2),
    });
    const lease = new LeaseKeeper({
      store: leaseStore,
      clock: systemClock,
      key: cfg.leaseKey,
      holder: `${cfg.managerId}|${cfg.advertise}`,
      ttlMs: cfg.leaderTimeoutMs,
      renewIntervalMs: cfg.leaderHeartbeatIntervalMs,
      retryIntervalMs: cfg.leaderHeartbeatIntervalMs,
      safetyMarginMs: managerLeaseMarginMs(cfg.leaderTimeoutMs),
      ...leaseStoreLogging(log),
    });
    const pool = new ClientPool();
    const events = {
      ...replicationMetrics(metrics.registry, () => manager as ReplicationManager),
      onActiveChange: (active: boolean) => setServing(active),
    };
    manager = new ReplicationManager({
      cfg,
      log,
      directory: new DirectoryApi(cfg.directories),
      stores: (s) => pool.store(s),
      shardStores: (s) => pool.store(s),
      lease,
      events,
    });
    const m = manager;
    m.start();
    return {
      metrics,
      services: [
        {
          desc: ReplicationService,
          register: (router) => router.service(ReplicationService, replicationService(m, cfg)),
        },
      ],
      onDrain: () => {
        closing = true;
        return m.stop();
      },
      onClose: () => leaseStore.close(),
    };
  });
  // Only the active instance serves ReplicationService as far as health checks
  // (Envoy) go; the standby stays up and answers, but takes no routed traffic.
  setServing = (active) => {
    if (!closing) {
      server.health.set(
        ReplicationService.typeName,
        active ? ServingStatus.SERVING : ServingStatus.NOT_SERVING,
      );
    }
  };
  setServing(manager?.active ?? false);
}
