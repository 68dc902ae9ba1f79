import { createServiceImplSpec } from '@connectrpc/connect';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { startStoreHeartbeat } from '../directory/heartbeat-client.js';
import { AccessReporter, ReporterKind } from '../replication/access-reporter.js';
import { ClientPool } from '../rpc/clients.js';
import { runServerProcess } from '../server/run.js';
import type { StoreConfig } from './config.js';
import { StoreServiceImpl, volumeStatsMessage } from './service.js';
import { Store } from './store.js';

/** `haystack store`: serves StoreService over this store's volumes. */
export async function runStore(cfg: StoreConfig): Promise<void> {
  await runServerProcess('store', cfg.storeId, cfg, async (log) => {
    const t0 = performance.now();
    const store = await Store.open({
      dataDir: cfg.dataDir,
      maxVolumeSize: cfg.maxVolumeSize,
      maxVolumes: cfg.maxVolumes,
      compactionThreshold: cfg.compactionThreshold,
      logger: log,
    });
    const opened = await store.stats();
    log.info(
      {
        dataDir: cfg.dataDir,
        volumes: opened.volumes.length,
        needles: opened.needleCount,
        ms: Math.round(performance.now() - t0),
      },
      'volumes loaded',
    );
    const peers = new ClientPool();
    // Reads feed the replication manager's heat map; corrupt replicas go to it for repair.
    const reporter = new AccessReporter({
      reporterId: cfg.storeId,
      kind: ReporterKind.STORE,
      managers: cfg.managers,
      intervalMs: cfg.statsReportIntervalMs,
      log,
      pool: peers,
    });
    reporter.start();
    const service = new StoreServiceImpl({
      storeId: cfg.storeId,
      store,
      peers,
      log,
      readChunkSize: cfg.readChunkSize,
      onRead: (blobId) => reporter.count(blobId),
      onCorrupt: (blobId) => {
        if (cfg.managers.length === 0) return;
        reporter.reportCorruption(cfg.storeId, [blobId]).catch((err: unknown) => {
          log.warn({ err, blobId }, 'could not report a corrupt replica');
        });
      },
    });

    // Compaction runs in the background; reads and writes continue meanwhile.
    const compactTimer = setInterval(() => {
      store.compact().then(
        (done) => {
          for (const c of done) log.info({ ...c }, 'volume compacted');
        },
        (err: unknown) => log.error({ err }, 'background compaction failed'),
      );
    }, cfg.compactionCheckIntervalMs);
    compactTimer.unref();

    const heartbeat =
      cfg.directories.length > 0
        ? startStoreHeartbeat({
            storeId: cfg.storeId,
            address: cfg.advertise,
            zone: cfg.zone,
            directories: cfg.directories,
            intervalMs: cfg.heartbeatIntervalMs,
            log,
            state: async () => {
              const s = await store.stats();
              return {
                capacityBytes: BigInt(s.capacityBytes),
                freeBytes: BigInt(s.freeBytes),
                writable: s.writable,
                volumes: s.volumes.map(volumeStatsMessage),
              };
            },
            onCommand: async (cmd) => {
              if (cmd.command.case === 'deleteBlobs') {
                for (const id of cmd.command.value.blobIds) await store.delete(id);
              } else if (cmd.command.case === 'compactVolume') {
                const vid = cmd.command.value.volumeId;
                await store.compact(vid === 0 ? undefined : vid);
              }
            },
          })
        : undefined;

    return {
      services: [
        {
          desc: StoreService,
          register: (router) => service.register(router),
          // Blob bytes: every call's CPU counts (see internal/server/direct-grpc.ts).
          direct: createServiceImplSpec<typeof StoreService>(StoreService, service.impl()),
        },
      ],
      onDrain: async () => {
        clearInterval(compactTimer);
        await Promise.all([heartbeat?.stop(), reporter.stop()]);
      },
      onClose: () => store.close(),
    };
  });
}
