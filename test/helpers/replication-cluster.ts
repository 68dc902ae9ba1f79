import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { type Client, createClient } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { BlobLocation } from '../../gen/haystack/v1/directory_pb.js';
import { ReplicationService } from '../../gen/haystack/v1/replication_pb.js';
import type { WriteResponse } from '../../gen/haystack/v1/store_pb.js';
import { DirectoryClient } from '../../internal/directory/client.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { NEEDLE_HEADER_SIZE } from '../../internal/store/needle.js';
import { Cluster, FAST_ENV } from './cluster.js';
import { securityOf } from './pki.js';
import { freePort } from './redis.js';
import { readBlob, type StoreClient, storeClient, writeBlob } from './store-client.js';
import { type ServerProcess, spawnServer } from './tools.js';

export type ReplicationClient = Client<typeof ReplicationService>;

/** Short intervals for the replication manager (see internal/replication/config.ts). */
export const REPLICATION_FAST_ENV: Record<string, string> = {
  // Per-minute thresholds high enough that the tests' verification reads stay cold.
  ACCESS_RATE_THRESHOLD: '900',
  HIGH_ACCESS_THRESHOLD: '1500',
  COOL_DOWN_THRESHOLD: '600',
  STATS_REPORT_INTERVAL: '1s',
  EWMA_PERIOD: '1s',
  EWMA_ALPHA: '0.5',
  DE_REPLICATION_GRACE_PERIOD: '3s',
  MONITORING_INTERVAL: '1s',
  GC_INTERVAL: '1s',
  GC_GRACE_PERIOD: '2s',
  SCRUB_INTERVAL: '2s',
  RETRY_BACKOFF: '200ms',
  RETRY_BACKOFF_MAX: '1s',
  BREAKER_OPEN_TIME: '2s',
  LEADER_TIMEOUT: '2s',
  LEADER_HEARTBEAT_INTERVAL: '300ms',
};

export const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

/**
 * A real cluster for the replication tests: the shared Cluster (Redis,
 * directories, stores) without gateways or Envoy, plus two replication managers
 * sharing the Redis lease. Stores get REPLICATION_ADDRS so they stream access
 * counts to the managers.
 */
export class ReplicationCluster {
  readonly managers: (ServerProcess | undefined)[] = [];
  /** The directory as a gateway calls it (AllocateWrite, CommitWrite, Locate). */
  readonly directory: DirectoryClient;
  /** The directory as a replication manager calls it (UpdatePlacement, UpdateReplicas). */
  readonly managerDirectory: DirectoryClient;

  private constructor(
    readonly cluster: Cluster,
    private readonly managerPorts: number[],
    private readonly managerEnv: Record<string, string>,
    managerSecurity: TransportSecurity,
  ) {
    const addresses = cluster.directoryAddrs.split(',');
    this.directory = new DirectoryClient({ addresses, deadlineMs: 20_000 });
    this.managerDirectory = new DirectoryClient({ addresses, deadlineMs: 20_000, security: managerSecurity });
  }

  static async start(
    o: { stores?: number; directories?: number; env?: Record<string, string> } = {},
  ): Promise<ReplicationCluster> {
    const managerPorts = [await freePort(), await freePort()];
    const managerAddrs = managerPorts.map((p) => `127.0.0.1:${p}`).join(',');
    const cluster = await Cluster.start({
      directories: o.directories ?? 1,
      stores: o.stores ?? 5,
      gateways: 0,
      replication: false,
      envoy: false,
      // DOWN after 2 s of silence: quick enough for the tests, slow enough that a
      // loaded machine does not flap stores (each flap costs a copy and a removal).
      // The per-blob replication manager (v1 layout); placement groups: placement-replication.test.ts.
      env: {
        HEARTBEAT_INTERVAL: '300ms',
        STORE_DEGRADED_AFTER: '1s',
        STORE_DOWN_AFTER: '2s',
        PLACEMENT_GROUPS: '0',
        ...o.env,
      },
      storeEnv: { REPLICATION_ADDRS: managerAddrs, STATS_REPORT_INTERVAL: '1s' },
    });
    const env = { ...FAST_ENV, ...REPLICATION_FAST_ENV, ...o.env };
    const rc = new ReplicationCluster(
      cluster,
      managerPorts,
      env,
      await securityOf({ role: 'replication', id: 'test-manager' }),
    );
    try {
      await Promise.all([rc.startManager(0), rc.startManager(1)]);
    } catch (err) {
      await rc.stop();
      throw err;
    }
    return rc;
  }

  async startManager(i: number): Promise<ServerProcess> {
    const p = await spawnServer({
      name: `replication-${i}`,
      args: ['replication', '--listen', `127.0.0.1:${this.managerPorts[i]}`],
      env: {
        ...this.managerEnv,
        MANAGER_ID: `replication-${i}`,
        REDIS_URL: this.cluster.redis?.url ?? '',
        DIRECTORY_ADDRS: this.cluster.directoryAddrs,
      },
      echo: process.env.REPLICATION_TEST_ECHO === '1',
    });
    this.managers[i] = p;
    return p;
  }

  manager(i: number): ReplicationClient {
    return createClient(
      ReplicationService,
      this.cluster.transport(`127.0.0.1:${this.managerPorts[i]}`, 'replication'),
    );
  }

  /** Index of the active manager (waits for one). */
  async activeManager(timeoutMs = 15_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (let i = 0; i < this.managers.length; i++) {
        const p = this.managers[i];
        if (!p || p.child.exitCode !== null || p.child.signalCode !== null) continue;
        // Not a 1 s bound: a manager busy with its takeover pass on a loaded 2-core
        // box answers late, and the wait is for it being active, not for it being fast.
        const s = await this.manager(i)
          .getStats({}, { timeoutMs: Math.max(1000, Math.min(5000, deadline - Date.now())) })
          .catch(() => undefined);
        if (s?.active) return i;
      }
      if (Date.now() > deadline) throw new Error(`no active replication manager\n${this.logs()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  storeIndex(storeId: string): number {
    const i = Number(/^store-(\d+)$/.exec(storeId)?.[1]);
    if (!Number.isInteger(i)) throw new Error(`unknown store ${storeId}`);
    return i;
  }

  store(i: number): StoreClient {
    const p = this.cluster.stores[i];
    if (!p) throw new Error(`no store ${i}`);
    return storeClient(p.address);
  }

  storeDataDir(i: number): string {
    return path.join(this.cluster.dataDir, `store-${i}`);
  }

  /** Writes a blob the way a gateway does: allocate, stream to the stores (forwarding), commit. */
  async upload(blobId: string, data: Uint8Array): Promise<WriteResponse> {
    const { res, alloc } = await this.writeUncommitted(blobId, data);
    await this.directory.commitWrite({
      blobId,
      cookie: alloc.cookie,
      size: BigInt(data.length),
      sha256: sha256(data),
      contentType: 'application/octet-stream',
      replicas: res.replicas.map((r) => ({ storeId: r.storeId, volumeId: r.volumeId })),
    });
    return res;
  }

  /** Allocates and writes a blob without committing it (a write in flight). */
  async writeUncommitted(blobId: string, data: Uint8Array) {
    const alloc = await this.directory.allocateWrite({ blobId, size: BigInt(data.length) });
    const [first, ...rest] = alloc.stores;
    if (!first) throw new Error('allocation without stores');
    const res = await writeBlob(storeClient(first.address), blobId, data, {
      cookie: alloc.cookie,
      sha256: sha256(data),
      forwardTo: rest,
      term: alloc.term,
    });
    return { res, alloc };
  }

  async locate(blobId: string): Promise<BlobLocation> {
    const res = await this.directory.locate([blobId]);
    const loc = res.locations[0];
    if (!loc) throw new Error('no location');
    return loc;
  }

  /** Live replicas (the directory leaves DOWN stores out). */
  async liveReplicas(blobId: string): Promise<string[]> {
    const loc = await this.locate(blobId);
    return loc.replicas
      .filter((r) => r.health !== StoreHealth.DOWN)
      .map((r) => r.storeId)
      .sort();
  }

  /**
   * Reads a blob the way a gateway does without its cache: locate, then each
   * replica in turn until one returns bytes matching the committed SHA-256.
   */
  async readVerified(blobId: string): Promise<Buffer> {
    const loc = await this.locate(blobId);
    if (!loc.found || !loc.blob) throw new Error(`${blobId} not found`);
    const want = Buffer.from(loc.blob.sha256);
    const errors: string[] = [];
    for (const r of loc.replicas) {
      try {
        const data = await readBlob(storeClient(r.address), blobId, { cookie: loc.blob.cookie });
        if (sha256(data).equals(want)) return data;
        errors.push(`${r.storeId}: checksum mismatch`);
      } catch (err) {
        errors.push(`${r.storeId}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    throw new Error(`every replica of ${blobId} failed: ${errors.join('; ')}`);
  }

  /** Flips bytes inside a needle's data on a store's disk (behind the store's back). */
  async corrupt(storeIndex: number, volumeId: number, needleOffset: bigint, blobId: string): Promise<void> {
    const f = await open(path.join(this.storeDataDir(storeIndex), `${volumeId}.dat`), 'r+');
    try {
      const at = Number(needleOffset) + NEEDLE_HEADER_SIZE + blobId.length + 100;
      const b = Buffer.alloc(8);
      await f.read(b, 0, 8, at);
      for (let i = 0; i < b.length; i++) b[i] = (b[i] ?? 0) ^ 0xff;
      await f.write(b, 0, 8, at);
      await f.sync();
    } finally {
      await f.close();
    }
  }

  logs(): string {
    const ms = this.managers
      .filter((p): p is ServerProcess => p !== undefined)
      .map((p) => `--- ${p.name}\n${p.logs().slice(-3000)}`);
    return `${this.cluster.logs()}\n${ms.join('\n')}`;
  }

  async stop(): Promise<void> {
    await Promise.all(this.managers.map((m) => m?.kill()));
    await this.cluster.stop();
  }
}

/** Polls `fn` until it returns a value (not undefined) or the time is up. */
export async function waitFor<T>(
  fn: () => Promise<T | undefined> | T | undefined,
  ms: number,
  what: string,
  logs?: () => string,
): Promise<T> {
  const deadline = Date.now() + ms;
  let lastErr = '';
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      lastErr = err instanceof Error ? err.message : String(err);
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${ms} ms waiting for ${what}${lastErr ? ` (last error: ${lastErr})` : ''}\n${logs?.() ?? ''}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
