import { open, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { type Client, createClient } from '@connectrpc/connect';
import { ReplicationService } from '../../gen/haystack/v1/replication_pb.js';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { DirectoryClient } from '../../internal/directory/client.js';
import { GATEWAYS_HTTP1 } from '../../internal/edge/envoy-clusters.js';
import type { EnvoyOptions } from '../../internal/edge/envoy-config.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster, type ClusterOptions } from '../helpers/cluster.js';
import { freePort } from '../helpers/redis.js';
import { REPLICATION_FAST_ENV } from '../helpers/replication-cluster.js';
import { type ServerProcess, spawnServer } from '../helpers/tools.js';
import { RecordingClient } from './history-recorder.js';
import { PAUSES } from './pauses.js';
import { SLOW_READER_GATEWAY_ENV } from './slow-reader.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const UNLIMITED = { maxTokens: 1_000_000, tokensPerFill: 1_000_000, fillIntervalMs: 1000 };

/** Retries as an application would configure them for a flaky network (the fault runs' SDK clients). */
const SDK_RETRIES = { retries: 6, retryMaxMs: 1500, timeoutMs: 20_000 };

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
  ) {
    this.sdk = new HaystackClient({ url: cluster.url, ...SDK_RETRIES });
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
      // Anti-entropy counts needles older than this as settled (default 30 s): the audit
      // before the final check then converges writes of unknown outcome.
      ANTI_ENTROPY_SETTLE: '2s',
      // The manager scrubs every store in turn, then waits this long. By the end of the
      // full suite each store holds over a gigabyte: at 2 s (the integration tests'
      // value) the stores scrubbed nearly all the time, on CPU the faults and checks
      // need. The final check scrubs every store itself.
      SCRUB_INTERVAL: '30s',
      // Every process logs to <dataDir>/<name>.log (kept after the run): info, to read a failure.
      LOG_LEVEL: process.env.FAULTS_LOG_LEVEL ?? 'info',
    };
    const envoyOverrides: Partial<EnvoyOptions> = {
      uploadRateLimit: UNLIMITED,
      deleteRateLimit: UNLIMITED,
      readRateLimit: UNLIMITED,
      replication: managerPorts.map((port) => ({ host: '127.0.0.1', port })),
    };
    const storeEnv = { REPLICATION_ADDRS: managerAddrs, STATS_REPORT_INTERVAL: '1s', ...o.storeEnv };
    const stores = o.stores ?? 4;
    const opts: ClusterOptions = {
      directories: 3,
      stores,
      gateways: 2,
      replication: false,
      env,
      storeEnv,
      // Every store gets placement-group memberships, even one that registers late (a
      // store killed or paused as a fault must be one that holds data).
      directoryEnv: { PLACEMENT_EXPECTED_STORES: String(stores) },
      gatewayEnv: { REPLICATION_ADDRS: managerAddrs, ...SLOW_READER_GATEWAY_ENV },
      envoy: envoyOverrides,
    };
    const cluster = await Cluster.start(opts);
    const fc = new FaultCluster(cluster, managerPorts, env);
    try {
      await Promise.all(managerPorts.map((_, i) => fc.startManager(i)));
      await fc.activeManager(90_000); // first election of processes just started, under whatever load the box has
    } catch (err) {
      await fc.stop();
      throw err;
    }
    return fc;
  }

  /**
   * A fresh SDK client with the same settings as `sdk` that records every call for
   * the history checker (history-recorder.ts): one per fault run, so its history is
   * that run's alone.
   */
  recordingClient(): RecordingClient {
    return new RecordingClient({ url: this.cluster.url, ...SDK_RETRIES });
  }

  async startManager(i: number): Promise<ServerProcess> {
    const p = await spawnServer({
      name: `replication-${i}`,
      args: ['replication', '--listen', `127.0.0.1:${this.managerPorts[i]}`],
      logFile: path.join(this.cluster.dataDir, `replication-${i}.log`),
      env: {
        ...this.env,
        MANAGER_ID: `replication-${i}`,
        REDIS_URL: this.cluster.redis?.url ?? '',
        DIRECTORY_ADDRS: this.cluster.directoryAddrs,
      },
    });
    this.managers[i] = p;
    return p;
  }

  /**
   * RunAudit on the active manager (what the nightly audit and an operator do): in
   * placement mode a full anti-entropy round over every group, so a write whose
   * outcome was unknown and that reached only some members is copied to the rest.
   */
  async audit(): Promise<void> {
    const i = await this.activeManager();
    await createClient(
      ReplicationService,
      this.cluster.transport(`127.0.0.1:${this.managerPorts[i]}`, 'replication'),
    ).runAudit({}, { timeoutMs: 120_000 });
  }

  /** Index of the active replication manager (waits for one). */
  async activeManager(timeoutMs = 60_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (let i = 0; i < this.managerPorts.length; i++) {
        const p = this.managers[i];
        if (!p || p.child.exitCode !== null || p.child.signalCode !== null) continue;
        const c = createClient(
          ReplicationService,
          this.cluster.transport(`127.0.0.1:${this.managerPorts[i]}`, 'replication'),
        );
        const s = await c.getStats({}, { timeoutMs: 1000 }).catch(() => undefined);
        if (s?.active) return i;
      }
      if (Date.now() > deadline) throw new Error('no active replication manager');
      await sleep(100);
    }
  }

  /** host:port of replication manager i. */
  managerAddress(i: number): string {
    return `127.0.0.1:${this.managerPorts[i]}`;
  }

  storeAddresses(): string[] {
    return this.cluster.stores.map((s) => s.address);
  }

  storeDataDir(i: number): string {
    return path.join(this.cluster.dataDir, `store-${i}`);
  }

  private readonly storeClients = new Map<string, Client<typeof StoreService>>();

  /** The operator's client of store i (scrub, compact): one connection per address, reused. */
  store(i: number): Client<typeof StoreService> {
    const p = this.cluster.stores[i];
    if (!p) throw new Error(`no store ${i}`);
    let c = this.storeClients.get(p.address);
    if (!c) {
      c = createClient(StoreService, this.cluster.transport(p.address, 'store'));
      this.storeClients.set(p.address, c);
    }
    return c;
  }

  /** kill -9 Envoy. */
  async killEnvoy(): Promise<void> {
    const e = this.cluster.envoy;
    if (!e) return;
    if (e.child.exitCode === null && e.child.signalCode === null) e.child.kill('SIGKILL');
    await e.exited;
  }

  /** Starts Envoy again on the same ports with the same configuration (its certificate too). */
  async restartEnvoy(): Promise<void> {
    await this.cluster.restartEnvoy();
  }

  /** Every process running and healthy again: a leader, all stores HEALTHY, Envoy routing. */
  async waitHealthy(timeoutMs = 60_000): Promise<void> {
    await this.cluster.waitReady(timeoutMs);
    await this.activeManager(timeoutMs);
    await this.cluster.envoy?.waitHealthy('gateways', this.cluster.gateways.length, timeoutMs);
    await this.cluster.envoy?.waitHealthy(GATEWAYS_HTTP1, this.cluster.gateways.length, timeoutMs);
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

/** A fault: kill -9 (or pause) one component, later restart (or resume) it. */
export interface Fault {
  name: string;
  /** Kills and says what was killed. */
  kill(fc: FaultCluster): Promise<string>;
  restart(fc: FaultCluster): Promise<void>;
  /** Checks after the restart (throws on a violation); what it saw is added to the report's `killed`. */
  after?(fc: FaultCluster): Promise<string>;
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
  ...PAUSES,
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

/**
 * Flips 8 bytes of a blob's needle in its volume file (at key + 16: the content
 * type when there is one, else the data) and returns `<file>@<position>`.
 *
 * The needle is found through the volume's index (`<vid>.idx`, a few MB: the last
 * record of the key is the copy the store serves), so a store holding gigabytes
 * after the full suite is not read whole — that took seconds per store, long enough
 * for a periodic scrub to find and repair an earlier flip before the test looked.
 * Files without an index (erasure-coded shards) are searched for the key.
 * `dataOffset` flips bytes that far into the content instead (the store then
 * streams the content up to there before its checksum fails).
 */
export async function flipBytesOnDisk(
  dataDir: string,
  blobId: string,
  o: { dataOffset?: number } = {},
): Promise<string> {
  const key = Buffer.from(blobId, 'latin1');
  const names = (await readdir(dataDir)).filter((n) => n.endsWith('.dat'));
  for (const name of names) {
    const file = path.join(dataDir, name);
    const found =
      (await keyOffsetByIndex(file, key)) ??
      (o.dataOffset === undefined ? await keyOffsetByScan(file, key) : undefined);
    if (!found) continue;
    // `dataOffset`: that many bytes into the content (past the content type and file name).
    const pos = found.at + key.length + (o.dataOffset === undefined ? 16 : found.metaLen + o.dataOffset);
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

/**
 * Where the key of the newest needle of `key` sits in `datFile`, from the index's
 * last record for it (docs/volume-format.md: record = crc u32 | keyLen u8 | flags u8 |
 * metaLen u16 | offset u64 | … | key at 40; the needle's key at offset + 40).
 * undefined when there is no index or no record; checked against the .dat bytes.
 * metaLen: the content type and file name bytes between the key and the content.
 */
async function keyOffsetByIndex(
  datFile: string,
  key: Buffer,
): Promise<{ at: number; metaLen: number } | undefined> {
  const idx = await readFile(datFile.replace(/\.dat$/, '.idx')).catch(() => undefined);
  if (!idx) return undefined;
  for (let hit = idx.lastIndexOf(key); hit >= 40; hit = idx.lastIndexOf(key, hit - 1)) {
    const rec = hit - 40;
    if (idx[rec + 4] !== key.length) continue;
    const at = Number(idx.readBigUInt64LE(rec + 8)) + 40;
    const metaLen = idx.readUInt16LE(rec + 6);
    const f = await open(datFile, 'r');
    try {
      const b = Buffer.alloc(key.length);
      await f.read(b, 0, key.length, at);
      if (b.equals(key)) return { at, metaLen };
    } finally {
      await f.close();
    }
  }
  return undefined;
}

/** The first occurrence of `key` in the file, read in 16 MiB chunks. */
async function keyOffsetByScan(
  file: string,
  key: Buffer,
): Promise<{ at: number; metaLen: number } | undefined> {
  const f = await open(file, 'r');
  try {
    const chunk = Buffer.alloc(16 << 20);
    for (let base = 0; ; base += chunk.length - key.length) {
      const { bytesRead } = await f.read(chunk, 0, chunk.length, base);
      const i = chunk.subarray(0, bytesRead).indexOf(key);
      if (i >= 0) return { at: base + i, metaLen: 0 };
      if (bytesRead < chunk.length) return undefined;
    }
  } finally {
    await f.close();
  }
}
