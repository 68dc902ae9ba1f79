import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import { createClient } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import { ReplicationService } from '../../gen/haystack/v1/replication_pb.js';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { DirectoryClient } from '../../internal/directory/client.js';
import type { EnvoyOptions } from '../../internal/edge/envoy-config.js';
import { startEnvoy } from '../../internal/edge/envoy-process.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster, type ClusterOptions } from '../helpers/cluster.js';
import { freePort } from '../helpers/redis.js';
import { REPLICATION_FAST_ENV } from '../helpers/replication-cluster.js';
import { type ServerProcess, spawnServer, tool } from '../helpers/tools.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const UNLIMITED = { maxTokens: 1_000_000, tokensPerFill: 1_000_000, fillIntervalMs: 1000 };

/**
 * The fault suite's cluster: one Redis (leases and the blob cache, so killing it
 * hits both), three directories, four stores (a write needs three healthy ones, so
 * one can die), two replication managers (one active), two gateways and Envoy —
 * all real processes — with the fast timings of the integration tests.
 */
export class FaultCluster {
  readonly managers: (ServerProcess | undefined)[] = [];
  readonly sdk: HaystackClient;
  readonly directory: DirectoryClient;

  private constructor(
    readonly cluster: Cluster,
    private readonly managerPorts: number[],
    private readonly env: Record<string, string>,
    private readonly envoyOverrides: Partial<EnvoyOptions>,
  ) {
    // Retries as an application would configure them for a flaky network.
    this.sdk = new HaystackClient({ url: cluster.url, retries: 6, retryMaxMs: 1500, timeoutMs: 20_000 });
    this.directory = new DirectoryClient({
      addresses: cluster.directoryAddrs.split(','),
      deadlineMs: 20_000,
    });
  }

  static async start(o: { stores?: number; storeEnv?: Record<string, string>; managers?: number } = {}) {
    const managerPorts = await Promise.all(Array.from({ length: o.managers ?? 2 }, freePort));
    const managerAddrs = managerPorts.map((p) => `127.0.0.1:${p}`).join(',');
    const env: Record<string, string> = {
      ...REPLICATION_FAST_ENV,
      HEARTBEAT_INTERVAL: '300ms',
      STORE_DEGRADED_AFTER: '1500ms',
      STORE_DOWN_AFTER: '3s',
    };
    const envoyOverrides: Partial<EnvoyOptions> = {
      uploadRateLimit: UNLIMITED,
      deleteRateLimit: UNLIMITED,
      replication: managerPorts.map((port) => ({ host: '127.0.0.1', port })),
    };
    const storeEnv = { REPLICATION_ADDRS: managerAddrs, STATS_REPORT_INTERVAL: '1s', ...o.storeEnv };
    const opts: ClusterOptions = {
      directories: 3,
      stores: o.stores ?? 4,
      gateways: 2,
      replication: false,
      env,
      storeEnv,
      gatewayEnv: { REPLICATION_ADDRS: managerAddrs },
      envoy: envoyOverrides,
    };
    const cluster = await Cluster.start(opts);
    const fc = new FaultCluster(cluster, managerPorts, env, envoyOverrides);
    try {
      await Promise.all(managerPorts.map((_, i) => fc.startManager(i)));
      await fc.activeManager();
    } catch (err) {
      await fc.stop();
      throw err;
    }
    return fc;
  }

  async startManager(i: number): Promise<ServerProcess> {
    const p = await spawnServer({
      name: `replication-${i}`,
      args: ['replication', '--listen', `127.0.0.1:${this.managerPorts[i]}`],
      env: {
        ...this.env,
        LOG_LEVEL: 'warn',
        MANAGER_ID: `replication-${i}`,
        REDIS_URL: this.cluster.redis?.url ?? '',
        DIRECTORY_ADDRS: this.cluster.directoryAddrs,
      },
    });
    this.managers[i] = p;
    return p;
  }

  /** Index of the active replication manager (waits for one). */
  async activeManager(timeoutMs = 20_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (let i = 0; i < this.managerPorts.length; i++) {
        const p = this.managers[i];
        if (!p || p.child.exitCode !== null || p.child.signalCode !== null) continue;
        const c = createClient(
          ReplicationService,
          createGrpcTransport({ baseUrl: `http://127.0.0.1:${this.managerPorts[i]}` }),
        );
        const s = await c.getStats({}, { timeoutMs: 1000 }).catch(() => undefined);
        if (s?.active) return i;
      }
      if (Date.now() > deadline) throw new Error('no active replication manager');
      await sleep(100);
    }
  }

  storeAddresses(): string[] {
    return this.cluster.stores.map((s) => s.address);
  }

  storeDataDir(i: number): string {
    return path.join(this.cluster.dataDir, `store-${i}`);
  }

  store(i: number) {
    const p = this.cluster.stores[i];
    if (!p) throw new Error(`no store ${i}`);
    return createClient(StoreService, createGrpcTransport({ baseUrl: `http://${p.address}` }));
  }

  /** kill -9 Envoy. */
  async killEnvoy(): Promise<void> {
    const e = this.cluster.envoy;
    if (!e) return;
    if (e.child.exitCode === null && e.child.signalCode === null) e.child.kill('SIGKILL');
    await e.exited;
  }

  /** Starts Envoy again on the same ports with the same configuration. */
  async restartEnvoy(): Promise<void> {
    const old = this.cluster.envoy;
    if (!old) throw new Error('no envoy');
    const hp = (a: string) => {
      const u = new URL(a.includes('://') ? a : `http://${a}`);
      return { host: u.hostname, port: Number(u.port) };
    };
    const e = await startEnvoy({
      bin: tool('envoy'),
      dir: path.dirname(old.configPath),
      config: {
        listen: hp(old.address),
        admin: hp(old.adminUrl),
        gateways: this.cluster.gateways.map((g) => hp(g.address)),
        directories: this.cluster.directoryAddrs.split(',').map(hp),
        replication: [],
        corsOrigins: ['*'],
        uploadRateLimit: UNLIMITED,
        deleteRateLimit: UNLIMITED,
        maxUploadBytes: 100 * 1024 * 1024,
        healthCheckIntervalMs: 500,
        accessLogPath: path.join(path.dirname(old.configPath), 'access.log'),
        ...this.envoyOverrides,
      },
    });
    this.cluster.envoy = e;
    await e.waitHealthy('gateways', this.cluster.gateways.length);
    await e.waitHealthy('directories', this.cluster.directories.length);
  }

  /** Every process running and healthy again: a leader, all stores HEALTHY, Envoy routing. */
  async waitHealthy(timeoutMs = 60_000): Promise<void> {
    await this.cluster.waitReady(timeoutMs);
    await this.activeManager(timeoutMs);
    await this.cluster.envoy?.waitHealthy('gateways', this.cluster.gateways.length, timeoutMs);
  }

  logs(): string {
    const ms = this.managers
      .filter((p): p is ServerProcess => p !== undefined)
      .map((p) => `--- ${p.name}\n${p.logs().slice(-2000)}`);
    return `${this.cluster.logs()}\n${ms.join('\n')}`;
  }

  async stop(): Promise<void> {
    await Promise.all(this.managers.map((m) => m?.kill()));
    await this.cluster.stop();
  }
}

/** A fault: kill -9 one component, later restart it. */
export interface Fault {
  name: string;
  /** Kills and says what was killed. */
  kill(fc: FaultCluster): Promise<string>;
  restart(fc: FaultCluster): Promise<void>;
}

export const FAULTS: Record<string, () => Fault> = {
  store: () => {
    const victim = 1;
    return {
      name: 'store',
      async kill(fc) {
        await fc.cluster.stores[victim]?.kill();
        return `store-${victim}`;
      },
      async restart(fc) {
        await fc.cluster.startStore(victim);
      },
    };
  },
  leader: () => {
    let victim = -1;
    return {
      name: 'leader directory',
      async kill(fc) {
        victim = await fc.cluster.leaderIndex();
        await fc.cluster.directories[victim]?.kill();
        return `directory-${victim} (leader)`;
      },
      async restart(fc) {
        await fc.cluster.startDirectory(victim);
      },
    };
  },
  follower: () => {
    let victim = -1;
    return {
      name: 'follower directory',
      async kill(fc) {
        const leader = await fc.cluster.leaderIndex();
        victim = (leader + 1) % fc.cluster.directories.length;
        await fc.cluster.directories[victim]?.kill();
        return `directory-${victim} (follower)`;
      },
      async restart(fc) {
        await fc.cluster.startDirectory(victim);
      },
    };
  },
  replication: () => {
    let victim = -1;
    return {
      name: 'active replication manager',
      async kill(fc) {
        victim = await fc.activeManager();
        await fc.managers[victim]?.kill();
        return `replication-${victim} (active)`;
      },
      async restart(fc) {
        await fc.startManager(victim);
      },
    };
  },
  redis: () => ({
    name: 'Redis',
    async kill(fc) {
      await fc.cluster.redis?.kill();
      return 'redis-server (leases and cache; restarts empty)';
    },
    async restart(fc) {
      await fc.cluster.redis?.restart();
    },
  }),
  envoy: () => ({
    name: 'Envoy',
    async kill(fc) {
      await fc.killEnvoy();
      return 'envoy';
    },
    async restart(fc) {
      await fc.restartEnvoy();
    },
  }),
};

/** Finds a needle's data in a volume file by its (unique) blob id and flips 8 bytes in it. */
export async function flipBytesOnDisk(dataDir: string, blobId: string): Promise<string> {
  const { readdir } = await import('node:fs/promises');
  const key = Buffer.from(blobId, 'latin1');
  for (const name of (await readdir(dataDir)).filter((n) => n.endsWith('.dat'))) {
    const file = path.join(dataDir, name);
    const buf = await readFile(file);
    const at = buf.indexOf(key);
    if (at < 0) continue;
    const pos = at + key.length + 16;
    const f = await open(file, 'r+');
    try {
      const b = Buffer.alloc(8);
      await f.read(b, 0, 8, pos);
      for (let i = 0; i < 8; i++) b[i] = (b[i] ?? 0) ^ 0xa5;
      await f.write(b, 0, 8, pos);
      await f.sync();
    } finally {
      await f.close();
    }
    return `${name}@${pos}`;
  }
  throw new Error(`blob ${blobId} not found in any volume under ${dataDir}`);
}
