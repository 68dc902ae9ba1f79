import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { type Client, createClient } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { DirectoryService, type GetClusterStatusResponse } from '../../gen/haystack/v1/directory_pb.js';
import { GATEWAYS_HTTP1 } from '../../internal/edge/envoy-clusters.js';
import type { EnvoyOptions } from '../../internal/edge/envoy-config.js';
import { type EnvoyProcess, startEnvoy } from '../../internal/edge/envoy-process.js';
import {
  DEFAULT_DELETE_RATE_LIMIT,
  DEFAULT_UPLOAD_RATE_LIMIT,
} from '../../internal/edge/envoy-rate-limit.js';
import { peerTransport } from '../../internal/rpc/transport.js';
import type { Role } from '../../internal/security/identity.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { identityFiles, securityOf, TEST_ADMIN } from './pki.js';
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
  /** Both Redis servers serve TLS only, with client certificates (REDIS_URL rediss://). */
  redisTls?: boolean;
  /** Start the real Envoy in front (default true); overrides of its options. */
  envoy?: boolean | Partial<EnvoyOptions>;
  /** Environment for every server (after the fast test defaults). */
  env?: Record<string, string>;
  /** Extra environment per component. */
  gatewayEnv?: Record<string, string>;
  /** Environment of gateway i alone (after gatewayEnv), asked when it starts. */
  gatewayEnvOf?: (i: number, cluster: Cluster) => Record<string, string>;
  storeEnv?: Record<string, string>;
  replicationEnv?: Record<string, string>;
  directoryEnv?: Record<string, string>;
  /** Echo every server's logs to stderr (debugging). */
  echo?: boolean;
  /** INSECURE_PLAINTEXT=1 everywhere (the bench's mTLS-off run); default mTLS. */
  plaintext?: boolean;
  /**
   * Stores report their reads' heat to the manager (REPLICATION_ADDRS, as deploy/ and
   * `haystack dev` wire them); only client reads count (not the manager's or stores'
   * own reads: ReadRequest.internal). Off by default: the integration tests' timings
   * were tuned without it (gateway-reported heat only); ec-cooling and bench:ec-zipf
   * turn it on.
   */
  storeHeat?: boolean;
  /** Node flags per server kind (benchmarks: `{ gateway: ['--cpu-prof', …] }`). */
  nodeArgs?: Partial<Record<'directory' | 'store' | 'gateway' | 'replication', string[]>>;
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
  // Not 2× / 3× HEARTBEAT_INTERVAL (the defaults): on a loaded 2-core machine a late
  // heartbeat would mark a live store DOWN and demote its group memberships. A killed
  // store is DOWN at once anyway (its heartbeat stream breaks).
  STORE_DEGRADED_AFTER: '3s',
  STORE_DOWN_AFTER: '6s',
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
  /** The options the cluster's Envoy runs with (a test may start another Envoy beside it). */
  envoyConfig: EnvoyOptions | undefined;
  readonly dataDir = tmpName('cluster');
  private directoryPorts: number[] = [];
  private storePorts: number[] = [];
  private gatewayPorts: number[] = [];
  private replicationPort = 0;
  private env: Record<string, string> = {};
  /** The gateways' CACHE_INTEGRITY_KEY (Redis never sees it). */
  private readonly cacheKey = randomBytes(32).toString('hex');
  /** The tests' own identity (an admin) for calls straight to the servers. */
  security: TransportSecurity = { mode: 'plaintext' };

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
    const tls = { tls: o.redisTls === true };
    if (o.redis !== false) this.redis = await RedisProcess.start(tls);
    if (o.cacheRedis) this.cacheRedis = await RedisProcess.start(tls);
    const nd = o.directories ?? 3;
    const ns = o.stores ?? 3;
    const ng = o.gateways ?? 2;
    this.directoryPorts = await Promise.all(Array.from({ length: nd }, freePort));
    this.storePorts = await Promise.all(Array.from({ length: ns }, freePort));
    this.gatewayPorts = await Promise.all(Array.from({ length: ng }, freePort));
    this.replicationPort = await freePort();
    this.env = {
      ...FAST_ENV,
      REDIS_URL: this.redis?.url ?? '',
      DIRECTORY_PEER_IDS: Array.from({ length: nd }, (_, i) => `directory-${i}`).join(','),
      ...(o.plaintext ? { INSECURE_PLAINTEXT: '1' } : {}),
      ...o.env,
    };
    if (!o.plaintext) this.security = await securityOf(TEST_ADMIN);

    await Promise.all(this.directoryPorts.map((_, i) => this.startDirectory(i)));
    await Promise.all(this.storePorts.map((_, i) => this.startStore(i)));
    if (o.replication !== false) await this.startReplication();
    await Promise.all(this.gatewayPorts.map((_, i) => this.startGateway(i)));
    await this.waitReady();

    if (o.envoy !== false) {
      const overrides = typeof o.envoy === 'object' ? o.envoy : {};
      const h = (port: number) => ({ host: '127.0.0.1', port });
      this.envoyConfig = {
        listen: h(await freePort()),
        admin: h(await freePort()),
        gateways: this.gatewayPorts.map(h),
        directories: this.directoryPorts.map(h),
        replication: [h(this.replicationPort)],
        corsOrigins: [],
        // Tokens checked at the edge too, the JWKS fetched from the gateways.
        auth: {},
        uploadRateLimit: DEFAULT_UPLOAD_RATE_LIMIT,
        deleteRateLimit: DEFAULT_DELETE_RATE_LIMIT,
        maxUploadBytes: 100 * 1024 * 1024,
        healthCheckIntervalMs: 500,
        accessLogPath: `${this.dataDir}/envoy/access.log`,
        ...(o.plaintext ? {} : { upstreamTls: await identityFiles({ role: 'envoy', id: 'envoy-0' }) }),
        ...overrides,
      };
      await this.restartEnvoy();
    }
  }

  /**
   * Starts Envoy (again, after a kill) on the same ports with the same
   * configuration, its certificate included; waits until it routes to every
   * gateway and directory.
   */
  async restartEnvoy(): Promise<void> {
    if (!this.envoyConfig) throw new Error('this cluster runs without Envoy');
    this.envoy = await startEnvoy({
      bin: tool('envoy'),
      dir: `${this.dataDir}/envoy`,
      config: this.envoyConfig,
    });
    await this.envoy.waitHealthy('gateways', this.gateways.length);
    await this.envoy.waitHealthy(GATEWAYS_HTTP1, this.gateways.length);
    await this.envoy.waitHealthy('directories', this.directories.length);
  }

  private async spawn(name: string, args: string[], env: Record<string, string>): Promise<ServerProcess> {
    // Each process's stderr also goes to <dataDir>/<name>.log (appended across restarts), kept after stop.
    return spawnServer({
      name,
      args,
      env: { ...this.env, ...env },
      echo: this.opts.echo ?? false,
      logFile: `${this.dataDir}/${name}.log`,
      nodeArgs: this.opts.nodeArgs?.[args[0] as 'store'] ?? [],
      // A process starting beside a dozen others on a loaded 2-core box can take well over 20 s.
      readyTimeoutMs: 60_000,
    });
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
      {
        STORE_ID: `store-${i}`,
        DIRECTORY_ADDRS: this.directoryAddrs,
        ...(this.opts.storeHeat && this.opts.replication !== false
          ? { REPLICATION_ADDRS: `127.0.0.1:${this.replicationPort}` }
          : {}),
        ...this.opts.storeEnv,
      },
    );
    this.stores[i] = p;
    return p;
  }

  /** Adds a store to the running cluster (new and empty), as store-<n>. */
  async addStore(): Promise<ServerProcess> {
    this.storePorts.push(await freePort());
    return this.startStore(this.storePorts.length - 1);
  }

  /** Starts the replication manager (again, after a kill) on its port. */
  async startReplication(): Promise<ServerProcess> {
    this.replication = await this.spawn(
      'replication',
      ['replication', '--listen', `127.0.0.1:${this.replicationPort}`],
      { MANAGER_ID: 'replication-0', DIRECTORY_ADDRS: this.directoryAddrs, ...this.opts.replicationEnv },
    );
    return this.replication;
  }

  /** Starts gateway `i` (again, after a kill) on its port; `env` on top of the cluster's (this one gateway only). */
  async startGateway(i: number, env: Record<string, string> = {}): Promise<ServerProcess> {
    const p = await this.spawn(`gateway-${i}`, ['gateway', '--listen', `127.0.0.1:${this.gatewayPorts[i]}`], {
      GATEWAY_ID: `gateway-${i}`,
      DIRECTORY_ADDRS: this.directoryAddrs,
      ...(this.opts.replication !== false ? { REPLICATION_ADDRS: `127.0.0.1:${this.replicationPort}` } : {}),
      ...(this.cacheRedis ? { REDIS_URL: this.cacheRedis.url } : {}),
      // One key for all gateways: an entry one seals, another verifies (the cache is shared).
      CACHE_INTEGRITY_KEY: this.cacheKey,
      ...this.opts.gatewayEnv,
      ...this.opts.gatewayEnvOf?.(i, this),
      ...env,
    });
    this.gateways[i] = p;
    return p;
  }

  /** A transport from the test (as an admin, or `as`) to a server of `role` at `address`. */
  transport(address: string, role: Role, as: TransportSecurity = this.security) {
    return peerTransport(address, [role], {}, this.opts.plaintext ? { mode: 'plaintext' } : as);
  }

  private directoryClient(i: number): Client<typeof DirectoryService> {
    return createClient(DirectoryService, this.transport(`127.0.0.1:${this.directoryPorts[i]}`, 'directory'));
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

  /**
   * Index of the leader directory, polled until one is elected: between a lease expiry and the
   * next election the cluster is briefly leaderless (leader_id ""), which is not an error.
   * Throws after `timeoutMs` without a leader among the running directories.
   */
  async leaderIndex(timeoutMs = 30_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        const s = await this.status();
        const idx = this.directories.findIndex((_, i) => s.leaderId === `directory-${i}`);
        if (idx >= 0) return idx;
        last = `leader_id "${s.leaderId}"`;
      } catch (err) {
        last = String(err);
      }
      if (Date.now() >= deadline) throw new Error(`no leader after ${timeoutMs} ms (${last})`);
      await new Promise((r) => setTimeout(r, 100));
    }
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
