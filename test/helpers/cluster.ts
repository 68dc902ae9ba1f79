import { mkdirSync } from 'node:fs';
import { type Client, createClient } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { DirectoryService, type GetClusterStatusResponse } from '../../gen/haystack/v1/directory_pb.js';
import {
  DEFAULT_DELETE_RATE_LIMIT,
  DEFAULT_UPLOAD_RATE_LIMIT,
  type EnvoyOptions,
} from '../../internal/edge/envoy-config.js';
import { type EnvoyProcess, startEnvoy } from '../../internal/edge/envoy-process.js';
import { freePort, RedisProcess } from './redis.js';
import { type ServerProcess, spawnServer, tmpName, tool } from './tools.js';

export interface ClusterOptions {
  directories?: number;
  stores?: number;
  gateways?: number;
  /** Start a replication manager (default true). */
  replication?: boolean;
  /** Start a real redis-server (default true); false runs leases and caches in-process. */
  redis?: boolean;
  /**
   * Give the gateways their own redis-server for the blob cache (as in deploy/: an
   * allkeys-lru cache must not share an instance with the directory's lease).
   */
  cacheRedis?: boolean;
  /** Start the real Envoy in front (default true); overrides of its options. */
  envoy?: boolean | Partial<EnvoyOptions>;
  /** Environment for every server (after the fast test defaults). */
  env?: Record<string, string>;
  /** Extra environment per component. */
  gatewayEnv?: Record<string, string>;
  storeEnv?: Record<string, string>;
  directoryEnv?: Record<string, string>;
  /** Echo every server's logs to stderr (debugging). */
  echo?: boolean;
}

/** Short intervals so elections, heartbeats and reports happen within a test's time. */
export const FAST_ENV: Record<string, string> = {
  LOG_LEVEL: 'warn',
  HEARTBEAT_INTERVAL: '300ms',
  LEADER_TIMEOUT: '2s',
  LEADER_HEARTBEAT_INTERVAL: '400ms',
  FOLLOWER_SYNC_INTERVAL: '20ms',
  STATS_REPORT_INTERVAL: '1s',
  SHUTDOWN_GRACE: '3s',
  STORE_TIMEOUT: '2s',
  DIRECTORY_TIMEOUT: '2s',
  MIN_FREE_BYTES: '1MiB',
};

/**
 * A whole Haystack cluster of real processes on loopback: redis-server, the
 * directories, the stores, the replication manager, the gateways and Envoy. One
 * per test file (starting one takes a few seconds).
 */
export class Cluster {
  redis: RedisProcess | undefined;
  cacheRedis: RedisProcess | undefined;
  readonly directories: ServerProcess[] = [];
  readonly stores: ServerProcess[] = [];
  readonly gateways: ServerProcess[] = [];
  replication: ServerProcess | undefined;
  envoy: EnvoyProcess | undefined;
  readonly dataDir = tmpName('cluster');
  private directoryPorts: number[] = [];
  private storePorts: number[] = [];
  private gatewayPorts: number[] = [];
  private replicationPort = 0;
  private env: Record<string, string> = {};

  private constructor(private readonly opts: ClusterOptions) {}

  static async start(opts: ClusterOptions = {}): Promise<Cluster> {
    const c = new Cluster(opts);
    try {
      await c.boot();
    } catch (err) {
      await c.stop();
      throw err;
    }
    return c;
  }

  /** Envoy's URL (or the first gateway's without Envoy). */
  get url(): string {
    return `http://${this.envoy?.address ?? this.gateways[0]?.address}`;
  }

  get directoryAddrs(): string {
    return this.directoryPorts.map((p) => `127.0.0.1:${p}`).join(',');
  }

  private async boot(): Promise<void> {
    const o = this.opts;
    mkdirSync(this.dataDir, { recursive: true });
    if (o.redis !== false) this.redis = await RedisProcess.start();
    if (o.cacheRedis) this.cacheRedis = await RedisProcess.start();
    const nd = o.directories ?? 3;
    const ns = o.stores ?? 3;
    const ng = o.gateways ?? 2;
    this.directoryPorts = await Promise.all(Array.from({ length: nd }, freePort));
    this.storePorts = await Promise.all(Array.from({ length: ns }, freePort));
    this.gatewayPorts = await Promise.all(Array.from({ length: ng }, freePort));
    this.replicationPort = await freePort();
    this.env = { ...FAST_ENV, REDIS_URL: this.redis?.url ?? '', ...o.env };

    await Promise.all(this.directoryPorts.map((_, i) => this.startDirectory(i)));
    await Promise.all(this.storePorts.map((_, i) => this.startStore(i)));
    if (o.replication !== false) {
      this.replication = await this.spawn(
        'replication',
        ['replication', '--listen', `127.0.0.1:${this.replicationPort}`],
        {
          MANAGER_ID: 'replication-0',
          DIRECTORY_ADDRS: this.directoryAddrs,
        },
      );
    }
    await Promise.all(this.gatewayPorts.map((_, i) => this.startGateway(i)));
    await this.waitReady();

    if (o.envoy !== false) {
      const overrides = typeof o.envoy === 'object' ? o.envoy : {};
      const h = (port: number) => ({ host: '127.0.0.1', port });
      this.envoy = await startEnvoy({
        bin: tool('envoy'),
        dir: `${this.dataDir}/envoy`,
        config: {
          listen: h(await freePort()),
          admin: h(await freePort()),
          gateways: this.gatewayPorts.map(h),
          directories: this.directoryPorts.map(h),
          replication: [h(this.replicationPort)],
          corsOrigins: ['*'],
          uploadRateLimit: DEFAULT_UPLOAD_RATE_LIMIT,
          deleteRateLimit: DEFAULT_DELETE_RATE_LIMIT,
          maxUploadBytes: 100 * 1024 * 1024,
          healthCheckIntervalMs: 500,
          accessLogPath: `${this.dataDir}/envoy/access.log`,
          ...overrides,
        },
      });
      await this.envoy.waitHealthy('gateways', ng);
      await this.envoy.waitHealthy('directories', nd);
    }
  }

  private async spawn(name: string, args: string[], env: Record<string, string>): Promise<ServerProcess> {
    return spawnServer({ name, args, env: { ...this.env, ...env }, echo: this.opts.echo ?? false });
  }

  async startDirectory(i: number): Promise<ServerProcess> {
    const p = await this.spawn(
      `directory-${i}`,
      [
        'directory',
        '--listen',
        `127.0.0.1:${this.directoryPorts[i]}`,
        '--data',
        `${this.dataDir}/directory-${i}`,
      ],
      { DIRECTORY_ID: `directory-${i}`, DIRECTORY_PEERS: this.directoryAddrs, ...this.opts.directoryEnv },
    );
    this.directories[i] = p;
    return p;
  }

  async startStore(i: number): Promise<ServerProcess> {
    const p = await this.spawn(
      `store-${i}`,
      ['store', '--listen', `127.0.0.1:${this.storePorts[i]}`, '--data', `${this.dataDir}/store-${i}`],
      { STORE_ID: `store-${i}`, DIRECTORY_ADDRS: this.directoryAddrs, ...this.opts.storeEnv },
    );
    this.stores[i] = p;
    return p;
  }

  async startGateway(i: number): Promise<ServerProcess> {
    const p = await this.spawn(`gateway-${i}`, ['gateway', '--listen', `127.0.0.1:${this.gatewayPorts[i]}`], {
      GATEWAY_ID: `gateway-${i}`,
      DIRECTORY_ADDRS: this.directoryAddrs,
      ...(this.opts.replication !== false ? { REPLICATION_ADDRS: `127.0.0.1:${this.replicationPort}` } : {}),
      ...(this.cacheRedis ? { REDIS_URL: this.cacheRedis.url } : {}),
      ...this.opts.gatewayEnv,
    });
    this.gateways[i] = p;
    return p;
  }

  private directoryClient(i: number): Client<typeof DirectoryService> {
    return createClient(
      DirectoryService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${this.directoryPorts[i]}` }),
    );
  }

  /** The cluster status from the first directory that answers. */
  async status(): Promise<GetClusterStatusResponse> {
    let last: unknown;
    for (let i = 0; i < this.directoryPorts.length; i++) {
      const d = this.directories[i];
      if (!d || d.child.exitCode !== null || d.child.signalCode !== null) continue;
      try {
        return await this.directoryClient(i).getClusterStatus({}, { timeoutMs: 2000 });
      } catch (err) {
        last = err;
      }
    }
    throw last ?? new Error('no directory is running');
  }

  /** Index of the leader directory. */
  async leaderIndex(): Promise<number> {
    const s = await this.status();
    const idx = this.directories.findIndex((_, i) => s.leaderId === `directory-${i}`);
    if (idx < 0) throw new Error(`no leader (leader_id "${s.leaderId}")`);
    return idx;
  }

  /** Waits for a leader and every running store to be HEALTHY in the directory. */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const running = this.stores.filter(
      (s) => s.child.exitCode === null && s.child.signalCode === null,
    ).length;
    let last = '';
    for (;;) {
      try {
        const s = await this.status();
        const healthy = s.stores.filter((x) => x.health === StoreHealth.HEALTHY).length;
        if (s.leaderId && healthy >= running) return;
        last = `leader "${s.leaderId}", ${healthy}/${running} stores healthy`;
      } catch (err) {
        last = String(err);
      }
      if (Date.now() > deadline) {
        const logs = this.directories.map((d) => `--- ${d.name}\n${d.logs().slice(-1500)}`).join('\n');
        throw new Error(`cluster not ready: ${last}\n${logs}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Every process's recent logs (for failure messages). */
  logs(): string {
    return [
      ...this.directories,
      ...this.stores,
      ...this.gateways,
      ...(this.replication ? [this.replication] : []),
    ]
      .map((p) => `--- ${p.name}\n${p.logs().slice(-2000)}`)
      .join('\n');
  }

  async stop(): Promise<void> {
    await this.envoy?.stop();
    await Promise.all(this.gateways.map((g) => g?.kill()));
    await this.replication?.kill();
    await Promise.all(this.stores.map((s) => s?.kill()));
    await Promise.all(this.directories.map((d) => d?.kill()));
    await this.redis?.kill();
    await this.cacheRedis?.kill();
  }
}
