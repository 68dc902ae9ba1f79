import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { createClient } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { DirectoryService, type GetClusterStatusResponse } from '../../gen/haystack/v1/directory_pb.js';
import { ReplicationService } from '../../gen/haystack/v1/replication_pb.js';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { PROJECT_ROOT } from '../../internal/cli/processes.js';
import { waitForPort } from '../../internal/cli/tools.js';
import { killOnExit } from '../../internal/common/child-reaper.js';
import { DirectoryClient } from '../../internal/directory/client.js';
import { GATEWAYS_HTTP1 } from '../../internal/edge/envoy-clusters.js';
import type { EnvoyOptions } from '../../internal/edge/envoy-config.js';
import { type EnvoyProcess, startEnvoy } from '../../internal/edge/envoy-process.js';
import { peerTransport } from '../../internal/rpc/transport.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import type { Identity, Role } from '../../internal/security/identity.js';
import { newRedisUser, redisAclArgs, redisUrl } from '../../internal/security/redis-acl.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { SLOW_READER_GATEWAY_ENV } from '../faults/slow-reader.js';
import { FAST_ENV } from '../helpers/cluster.js';
import { identityFiles, identityFilesAt, securityOf, TEST_ADMIN } from '../helpers/pki.js';
import { freePort } from '../helpers/redis.js';
import { REPLICATION_FAST_ENV } from '../helpers/replication-cluster.js';
import { type ServerProcess, spawnServer, tmpName, tool } from '../helpers/tools.js';
import { NetnsNet } from './net.js';

export const PORTS = { redis: 6379, directory: 9000, store: 8001, replication: 9003, gateway: 8100 };

const UNLIMITED = { maxTokens: 1_000_000, tokensPerFill: 1_000_000, fillIntervalMs: 1000 };

export interface NetnsClusterOptions {
  stores?: number;
  managers?: number;
  /** Environment for every server (after the fast test defaults). */
  env?: Record<string, string>;
  directoryEnv?: Record<string, string>;
  storeEnv?: Record<string, string>;
}

/**
 * A Haystack cluster with every component in its own network namespace (net.ts):
 * `redis`, `dir0..2`, `store0..n`, `repl0..m`, `gw0..1`, each at its own address on
 * 10.77.<slot>.0/24 and on the port deploy/ gives it, finding the others by the
 * configured addresses (DIRECTORY_PEERS, DIRECTORY_ADDRS, REDIS_URL,
 * REPLICATION_ADDRS). Each server's certificate carries its address as an IP SAN.
 * Envoy (the edge) and the test (the clients) live in the host namespace and
 * reach the components over the bridge. Namespace names double as component names.
 */
export class NetnsCluster {
  readonly dataDir = tmpName('netns-cluster');
  readonly directories: (ServerProcess | undefined)[] = [];
  readonly stores: (ServerProcess | undefined)[] = [];
  readonly managers: (ServerProcess | undefined)[] = [];
  readonly gateways: (ServerProcess | undefined)[] = [];
  redis: ChildProcess | undefined;
  envoy: EnvoyProcess | undefined;
  sdk!: HaystackClient;
  directory!: DirectoryClient;
  security!: TransportSecurity;
  private env: Record<string, string> = {};
  private readonly redisUser = newRedisUser('haystack');
  private readonly cacheKey = randomBytes(32).toString('hex');

  private constructor(
    readonly net: NetnsNet,
    private readonly o: NetnsClusterOptions,
  ) {}

  /**
   * Creates the network and starts everything; `onCreated` gets the cluster before it
   * boots, so a caller whose wait runs out (a hook timeout) can still stop it.
   */
  static async start(
    o: NetnsClusterOptions = {},
    onCreated?: (c: NetnsCluster) => void,
  ): Promise<NetnsCluster> {
    const net = await NetnsNet.create();
    const c = new NetnsCluster(net, o);
    onCreated?.(c);
    try {
      await c.boot();
    } catch (err) {
      await c.stop();
      throw err;
    }
    return c;
  }

  readonly names = {
    directories: [] as string[],
    stores: [] as string[],
    managers: [] as string[],
    gateways: [] as string[],
  };

  addr(name: string, port: number): string {
    return `${this.net.ipOf(name)}:${port}`;
  }

  get directoryAddrs(): string {
    return this.names.directories.map((n) => this.addr(n, PORTS.directory)).join(',');
  }

  get managerAddrs(): string {
    return this.names.managers.map((n) => this.addr(n, PORTS.replication)).join(',');
  }

  /** Envoy's public URL (in the host namespace). */
  get url(): string {
    return `http://${this.envoy?.address ?? ''}`;
  }

  get redisUrl(): string {
    return redisUrl(this.redisUser, this.net.ipOf('redis'), PORTS.redis);
  }

  private async boot(): Promise<void> {
    mkdirSync(this.dataDir, { recursive: true });
    const ns = this.o.stores ?? 4;
    const nm = this.o.managers ?? 2;
    await this.net.add('redis');
    for (let i = 0; i < 3; i++) this.names.directories.push(`dir${i}`);
    for (let i = 0; i < ns; i++) this.names.stores.push(`store${i}`);
    for (let i = 0; i < nm; i++) this.names.managers.push(`repl${i}`);
    for (let i = 0; i < 2; i++) this.names.gateways.push(`gw${i}`);
    const n = this.names;
    for (const name of [...n.directories, ...n.stores, ...n.managers, ...n.gateways])
      await this.net.add(name);
    this.env = {
      ...FAST_ENV,
      ...REPLICATION_FAST_ENV,
      HEARTBEAT_INTERVAL: '300ms',
      STORE_DEGRADED_AFTER: '1500ms',
      STORE_DOWN_AFTER: '3s',
      ANTI_ENTROPY_SETTLE: '2s',
      // 4 s leases, not the integration tests' 2 s: with a dozen processes on two loaded
      // cores (load average 45–70 seen) 2 s leases churned through dozens of terms a minute
      // (Redis commands and GetLogState timing out), and the cluster never settled.
      LEADER_TIMEOUT: '4s',
      LEADER_HEARTBEAT_INTERVAL: '800ms',
      LOG_LEVEL: process.env.NETNS_LOG_LEVEL ?? 'info',
      REDIS_URL: this.redisUrl,
      DIRECTORY_PEER_IDS: n.directories.map((_, i) => `directory-${i}`).join(','),
      ...this.o.env,
    };
    this.security = await securityOf(TEST_ADMIN);
    await this.startRedis();
    await Promise.all(n.directories.map((_, i) => this.startDirectory(i)));
    await Promise.all(n.stores.map((_, i) => this.startStore(i)));
    await Promise.all(n.managers.map((_, i) => this.startManager(i)));
    await Promise.all(n.gateways.map((_, i) => this.startGateway(i)));
    await this.waitReady(90_000);
    const h = (name: string, port: number) => ({ host: this.net.ipOf(name), port });
    const local = async () => ({ host: '127.0.0.1', port: await freePort() });
    const config: EnvoyOptions = {
      listen: await local(),
      admin: await local(),
      gateways: n.gateways.map((g) => h(g, PORTS.gateway)),
      directories: n.directories.map((d) => h(d, PORTS.directory)),
      replication: n.managers.map((m) => h(m, PORTS.replication)),
      corsOrigins: [],
      auth: {},
      uploadRateLimit: UNLIMITED,
      deleteRateLimit: UNLIMITED,
      maxUploadBytes: 100 * 1024 * 1024,
      healthCheckIntervalMs: 500,
      accessLogPath: `${this.dataDir}/envoy/access.log`,
      upstreamTls: await identityFiles({ role: 'envoy', id: 'envoy-0' }),
    };
    this.envoy = await startEnvoy({ bin: tool('envoy'), dir: `${this.dataDir}/envoy`, config });
    await this.envoy.waitHealthy('gateways', n.gateways.length, 60_000);
    await this.envoy.waitHealthy(GATEWAYS_HTTP1, n.gateways.length, 60_000);
    this.sdk = new HaystackClient({
      url: this.url,
      retries: 6,
      retryMaxMs: 1500,
      timeoutMs: 20_000,
    });
    this.directory = new DirectoryClient({ addresses: this.directoryAddrs.split(','), deadlineMs: 20_000 });
  }

  private async startRedis(): Promise<void> {
    const dir = path.join(this.dataDir, 'redis');
    mkdirSync(dir, { recursive: true });
    const child = spawn(
      'ip',
      [
        ...this.net.wrapper('redis').slice(1),
        tool('redis-server'),
        '--bind',
        this.net.ipOf('redis'),
        '--port',
        String(PORTS.redis),
        '--dir',
        dir,
        '--save',
        '',
        '--appendonly',
        'no',
        ...redisAclArgs(this.redisUser),
      ],
      { stdio: 'ignore' },
    );
    this.redis = child;
    killOnExit(child);
    await waitForPort(this.net.ipOf('redis'), PORTS.redis, 20_000);
  }

  private async spawn(
    name: string,
    identity: Identity,
    args: string[],
    env: Record<string, string>,
  ): Promise<ServerProcess> {
    const tls = await identityFilesAt(identity, [this.net.ipOf(name)]);
    return spawnServer({
      name,
      args,
      wrapper: this.net.wrapper(name),
      env: {
        ...this.env,
        TLS_CERT_FILE: tls.certFile,
        TLS_KEY_FILE: tls.keyFile,
        TLS_CA_FILE: tls.caFile,
        ...env,
      },
      logFile: path.join(this.dataDir, `${name}.log`),
      readyTimeoutMs: 90_000,
    });
  }

  /**
   * Kills component `name` (kill -9) and starts it again with `env` added (a skewed
   * clock, a slow disk) — or without, to undo that.
   */
  async restartWith(name: string, env: Record<string, string> = {}): Promise<void> {
    const d = this.names.directories.indexOf(name);
    const s = this.names.stores.indexOf(name);
    if (d >= 0) {
      await this.directories[d]?.kill();
      await this.startDirectory(d, env);
    } else if (s >= 0) {
      await this.stores[s]?.kill();
      await this.startStore(s, env);
    } else throw new Error(`restartWith: ${name} is not a directory or a store`);
  }

  async startDirectory(i: number, extra: Record<string, string> = {}): Promise<ServerProcess> {
    const name = this.names.directories[i] as string;
    const id = `directory-${i}`;
    const p = await this.spawn(
      name,
      { role: 'directory', id },
      ['directory', '--listen', this.addr(name, PORTS.directory), '--data', `${this.dataDir}/${name}`],
      {
        DIRECTORY_ID: id,
        DIRECTORY_PEERS: this.directoryAddrs,
        // Every store gets placement-group memberships, even one that registers late.
        PLACEMENT_EXPECTED_STORES: String(this.names.stores.length),
        ...this.o.directoryEnv,
        ...extra,
      },
    );
    this.directories[i] = p;
    return p;
  }

  async startStore(i: number, extra: Record<string, string> = {}): Promise<ServerProcess> {
    const name = this.names.stores[i] as string;
    const id = `store-${i}`;
    const p = await this.spawn(
      name,
      { role: 'store', id },
      ['store', '--listen', this.addr(name, PORTS.store), '--data', `${this.dataDir}/${name}`],
      {
        STORE_ID: id,
        DIRECTORY_ADDRS: this.directoryAddrs,
        REPLICATION_ADDRS: this.managerAddrs,
        ...this.o.storeEnv,
        ...extra,
      },
    );
    this.stores[i] = p;
    return p;
  }

  async startManager(i: number): Promise<ServerProcess> {
    const name = this.names.managers[i] as string;
    const id = `replication-${i}`;
    const p = await this.spawn(
      name,
      { role: 'replication', id },
      ['replication', '--listen', this.addr(name, PORTS.replication)],
      { MANAGER_ID: id, DIRECTORY_ADDRS: this.directoryAddrs },
    );
    this.managers[i] = p;
    return p;
  }

  async startGateway(i: number): Promise<ServerProcess> {
    const name = this.names.gateways[i] as string;
    const id = `gateway-${i}`;
    const p = await this.spawn(
      name,
      { role: 'gateway', id },
      ['gateway', '--listen', this.addr(name, PORTS.gateway)],
      {
        GATEWAY_ID: id,
        DIRECTORY_ADDRS: this.directoryAddrs,
        REPLICATION_ADDRS: this.managerAddrs,
        CACHE_INTEGRITY_KEY: this.cacheKey,
        // The slow reader's blobs (test/faults/slow-reader.ts) must be uploadable and cacheable.
        ...SLOW_READER_GATEWAY_ENV,
      },
    );
    this.gateways[i] = p;
    return p;
  }

  /** A transport from the test (an admin) to a server of `role`. */
  transport(address: string, role: Role) {
    return peerTransport(address, [role], {}, this.security);
  }

  private directoryClient(i: number) {
    return createClient(
      DirectoryService,
      this.transport(this.addr(this.names.directories[i] as string, PORTS.directory), 'directory'),
    );
  }

  /** GetClusterStatus of directory `i` (its own view). */
  statusOf(i: number, timeoutMs = 5000): Promise<GetClusterStatusResponse> {
    // localOnly: its own view. A full status asks every peer (1 s each), so while a peer is
    // cut off it took ~1 s and a 1 s poll timed out on every call (a fault "failed" on 04870e0).
    return this.directoryClient(i).getClusterStatus({ localOnly: true }, { timeoutMs });
  }

  /** The cluster status from the first directory that answers. */
  async status(): Promise<GetClusterStatusResponse> {
    let last: unknown;
    for (let i = 0; i < this.names.directories.length; i++) {
      if (!running(this.directories[i])) continue;
      try {
        return await this.statusOf(i);
      } catch (err) {
        last = err;
      }
    }
    throw last ?? new Error('no directory is running');
  }

  /** Index of the leader directory as the directories that answer report it (polled until one is). */
  async leaderIndex(timeoutMs = 30_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        const s = await this.status();
        const idx = this.names.directories.findIndex((_, i) => s.leaderId === `directory-${i}`);
        if (idx >= 0) return idx;
        last = `leader_id "${s.leaderId}"`;
      } catch (err) {
        last = String(err);
      }
      if (Date.now() >= deadline) throw new Error(`no leader after ${timeoutMs} ms (${last})`);
      await sleep(100);
    }
  }

  /** Waits for a leader and every running store HEALTHY. */
  async waitReady(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const want = this.stores.filter(running).length;
    let last = '';
    for (;;) {
      try {
        const s = await this.status();
        const healthy = s.stores.filter((x) => x.health === StoreHealth.HEALTHY).length;
        if (s.leaderId && healthy >= want) return;
        last = `leader "${s.leaderId}", ${healthy}/${want} stores healthy`;
      } catch (err) {
        last = String(err);
      }
      if (Date.now() > deadline) throw new Error(`netns cluster not ready: ${last}; logs in ${this.dataDir}`);
      await sleep(200);
    }
  }

  /** Index of the active replication manager (waits for one). */
  async activeManager(timeoutMs = 30_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (let i = 0; i < this.names.managers.length; i++) {
        if (!running(this.managers[i])) continue;
        const c = createClient(
          ReplicationService,
          this.transport(this.addr(this.names.managers[i] as string, PORTS.replication), 'replication'),
        );
        const s = await c.getStats({}, { timeoutMs: 1000 }).catch(() => undefined);
        if (s?.active) return i;
      }
      if (Date.now() > deadline) throw new Error('no active replication manager');
      await sleep(200);
    }
  }

  /** A full anti-entropy round on the active manager (as the nightly audit). */
  async audit(): Promise<void> {
    const i = await this.activeManager();
    await createClient(
      ReplicationService,
      this.transport(this.addr(this.names.managers[i] as string, PORTS.replication), 'replication'),
    ).runAudit({}, { timeoutMs: 120_000 });
  }

  /** Everything healthy: a leader, every store HEALTHY, an active manager, Envoy routing to both gateways. */
  async waitHealthy(timeoutMs = 90_000): Promise<void> {
    await this.waitReady(timeoutMs);
    await this.activeManager(timeoutMs);
    await this.envoy?.waitHealthy('gateways', this.names.gateways.length, timeoutMs);
    await this.envoy?.waitHealthy(GATEWAYS_HTTP1, this.names.gateways.length, timeoutMs);
  }

  /** A StoreService client to store `i` (as the test admin). */
  storeClient(i: number) {
    return createClient(
      StoreService,
      this.transport(this.addr(this.names.stores[i] as string, PORTS.store), 'store'),
    );
  }

  storeAddresses(): string[] {
    return this.names.stores.map((s) => this.addr(s, PORTS.store));
  }

  async stop(): Promise<void> {
    await this.envoy?.stop().catch(() => {});
    const all = [...this.gateways, ...this.managers, ...this.stores, ...this.directories];
    // A paused process is resumed first, so its SIGTERM-free kill and exit are prompt.
    for (const p of all) if (running(p)) p?.child.kill('SIGCONT');
    await Promise.all(all.map((p) => p?.kill()));
    if (this.redis && this.redis.exitCode === null && this.redis.signalCode === null) {
      const r = this.redis;
      const exited = new Promise((res) => r.once('exit', res));
      r.kill('SIGKILL');
      await exited;
    }
    await this.net.destroy();
  }
}

export function running(p: ServerProcess | undefined): p is ServerProcess {
  return p !== undefined && p.child.exitCode === null && p.child.signalCode === null;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Appends a line to a file (test-side event log next to the process logs). */
export function eventLog(file: string): (line: string) => void {
  const s = createWriteStream(file, { flags: 'a' });
  return (line) => s.write(`${new Date().toISOString()} ${line}\n`);
}

/**
 * The environment that runs a process with its wall clock `offset` away (libfaketime,
 * apt package faketime; test/env/bootstrap.sh installs it): "+30s", "-30s". The
 * monotonic clock is left alone, as NTP steps leave it.
 */
export function skewedClockEnv(offset: string): Record<string, string> {
  const lib = [
    path.join(PROJECT_ROOT, 'test/env/bin/libfaketime.so.1'),
    '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1',
    '/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1',
  ].find((p) => existsSync(p));
  if (!lib) throw new Error('libfaketime not found: run test/env/bootstrap.sh faketime');
  return { LD_PRELOAD: lib, FAKETIME: offset, FAKETIME_DONT_FAKE_MONOTONIC: '1' };
}
