import { createServiceImplSpec } from '@connectrpc/connect';
import { Counter } from 'prom-client';
import { DirectoryService } from '../../gen/haystack/v1/directory_pb.js';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { checkGroupCount } from '../common/placement.js';
import { startStoreHeartbeat } from '../directory/heartbeat-client.js';
import { AccessReporter, ReporterKind } from '../heat-client/access-reporter.js';
import { ClientPool } from '../rpc/clients.js';
import { setHeapGrowingPercent } from '../server/heap-growing.js';
import { Metrics } from '../server/metrics.js';
import { runServerProcess } from '../server/run.js';
import type { StoreConfig } from './config.js';
import { KeyRewrapper } from './crypto/rewrap.js';
import { FencingTerms } from './fencing-terms.js';
import { FORWARD_MESSAGE_LIMIT } from './forward-writes.js';
import { StoreMetrics } from './metrics.js';
import { StoreServiceImpl, volumeStatsMessage } from './service.js';
import { ShardStore } from './shard-store.js';
import { Store } from './store.js';
import { askDirectoryTerms, DirectoryTermWitness } from './term-witness.js';

/** `haystack store`: serves StoreService over this store's volumes. */
export async function runStore(cfg: StoreConfig): Promise<void> {
  await runServerProcess('store', cfg.storeId, cfg, async (log) => {
    setHeapGrowingPercent(cfg.heapGrowingPercent, log);
    const t0 = performance.now();
    const metrics = new Metrics({ service: 'store', instance: cfg.storeId });
    const storeMetrics = new StoreMetrics(metrics.registry);
    const cookieChecks = new Counter({
      name: 'haystack_store_read_cookie_checks_total',
      help: 'Read cookie checks: skipped (cookie 0: authorized by the caller), passed, refused (NOT_FOUND)',
      labelNames: ['result'],
      registers: [metrics.registry],
    });
    const store = await Store.open({
      dataDir: cfg.dataDir,
      maxVolumeSize: cfg.maxVolumeSize,
      maxVolumes: cfg.maxVolumes,
      compactionThreshold: cfg.compactionThreshold,
      logger: log,
      hooks: {
        ...storeMetrics.hooks,
        ...(cfg.faultFsyncDelayMs > 0
          ? { beforeFsync: () => new Promise<void>((r) => setTimeout(r, cfg.faultFsyncDelayMs)) }
          : {}),
      },
      ...(cfg.keyring ? { keyring: cfg.keyring } : {}),
    });
    if (cfg.faultFsyncDelayMs > 0)
      log.warn({ ms: cfg.faultFsyncDelayMs }, 'FAULT_FSYNC_DELAY: every fsync is slowed');
    storeMetrics.attach(store);
    // Erasure-coded shards of the cold tier: a second engine under <dataDir>/ec.
    const shards = await ShardStore.open({
      dataDir: cfg.dataDir,
      maxVolumeSize: cfg.maxVolumeSize,
      maxVolumes: cfg.maxVolumes,
      compactionThreshold: cfg.compactionThreshold,
      logger: log,
      ...(cfg.keyring ? { keyring: cfg.keyring } : {}),
    });
    storeMetrics.attachShards(shards);
    // Before serving: a restarted store must still refuse the terms it fenced out (a
    // corrupt file fails the start, FencingTermsCorruptError names it).
    const fencing = await FencingTerms.open(cfg.dataDir);
    log.info(
      {
        directoryTerm: String(fencing.highest('directory')),
        managerTerm: String(fencing.highest('manager')),
      },
      'fencing terms loaded',
    );
    const opened = await store.stats();
    log.info(
      {
        dataDir: cfg.dataDir,
        encryptedAtRest: cfg.keyring ? { kek: cfg.keyring.newest.id, keks: cfg.keyring.keys.length } : false,
        volumes: opened.volumes.length,
        needles: opened.needleCount,
        ms: Math.round(performance.now() - t0),
      },
      'volumes loaded',
    );
    const peers = new ClientPool();
    // Relayed directory terms are acted on once a directory states them (term-witness.ts).
    const directoryClients = cfg.directories.map((a) => peers.client(DirectoryService, a));
    const witness =
      directoryClients.length > 0
        ? new DirectoryTermWitness(fencing.highest('directory'), (wanted) =>
            askDirectoryTerms(directoryClients, wanted),
          )
        : undefined;
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
      forwardInlineMax: cfg.forwardInlineMax,
      requestIdleMs: cfg.limits.requestIdleMs,
      shards,
      fencing,
      ...(witness ? { witness } : {}),
      // RewrapKeys: KEK rotation without a restart (both engines' volume keys).
      ...(cfg.keyring
        ? { rewrapper: new KeyRewrapper(cfg.kekFile, cfg.keyring, [store, shards.engine]) }
        : {}),
      onRead: (blobId) => reporter.count(blobId),
      onCookieCheck: (result) => cookieChecks.inc({ result }),
      onCorrupt: (blobId) => {
        if (cfg.managers.length === 0) return;
        reporter.reportCorruption(cfg.storeId, [blobId]).catch((err: unknown) => {
          log.warn({ err, blobId }, 'could not report a corrupt replica');
        });
      },
    });

    // Compaction runs in the background; reads and writes continue meanwhile.
    const compactTimer = setInterval(() => {
      for (const [engine, what] of [
        [store, 'volume'],
        [shards.engine, 'shard volume'],
      ] as const) {
        engine.compact().then(
          (done) => {
            for (const c of done) log.info({ ...c }, `${what} compacted`);
          },
          (err: unknown) => log.error({ err }, `background ${what} compaction failed`),
        );
      }
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
            onTerm: (term) => witness?.observe(term),
            state: async () => {
              const s = await store.stats();
              const t = await shards.totals();
              const pb = store.liveBytesByGroup();
              return {
                capacityBytes: BigInt(s.capacityBytes),
                freeBytes: BigInt(s.freeBytes),
                writable: s.writable,
                volumes: s.volumes.map(volumeStatsMessage),
                shards: {
                  count: BigInt(t.count),
                  bytes: BigInt(t.bytes),
                  bytesByIndex: t.bytesByIndex.map((b) => BigInt(b)),
                },
                ...(pb.groupCount > 0
                  ? {
                      placementBytes: {
                        groupCount: pb.groupCount,
                        groups: pb.groups.map((g) => ({ group: g.group, bytes: BigInt(g.bytes) })),
                      },
                    }
                  : {}),
              };
            },
            // Live bytes per placement group, for the directory's replication factor.
            onGroupCount: (n) => {
              const bad = checkGroupCount(n);
              if (bad) log.warn({ groupCount: n }, `directory sent a bad placement group count: ${bad}`);
              else store.trackGroups(n);
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
      metrics,
      services: [
        {
          desc: StoreService,
          register: (router) => service.register(router),
          // Blob bytes: every call's CPU counts (see internal/server/direct-grpc.ts).
          direct: createServiceImplSpec<typeof StoreService>(StoreService, service.impl()),
          messageLimits: { ForwardWrites: FORWARD_MESSAGE_LIMIT },
        },
      ],
      onDrain: async () => {
        clearInterval(compactTimer);
        service.drain();
        await Promise.all([heartbeat?.stop(), reporter.stop()]);
      },
      onClose: async () => {
        service.close();
        await Promise.all([store.close(), shards.close()]);
      },
    };
  });
}
