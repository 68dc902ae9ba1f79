import { mkdirSync } from 'node:fs';
import { createClient } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { StoreCommand } from '../../gen/haystack/v1/directory_pb.js';
import { DirectoryRole, DirectoryService } from '../../gen/haystack/v1/directory_pb.js';
import { DirectoryClient } from '../../internal/directory/client.js';
import { type StoreHeartbeat, startStoreHeartbeat } from '../../internal/directory/heartbeat-client.js';
import { peerTransport } from '../../internal/rpc/transport.js';
import { createLogger } from '../../internal/server/logger.js';
import { securityOf, TEST_ADMIN } from './pki.js';
import { freePort, RedisProcess } from './redis.js';
import { type ServerProcess, spawnServer, tmpName } from './tools.js';

/** Short timeouts so failover and health tests run in seconds. */
export const FAST_ENV: Record<string, string> = {
  LEADER_TIMEOUT: '1.5s',
  LEADER_HEARTBEAT_INTERVAL: '300ms',
  HEARTBEAT_INTERVAL: '200ms',
  STORE_DEGRADED_AFTER: '600ms',
  STORE_DOWN_AFTER: '1200ms',
  FOLLOWER_SYNC_INTERVAL: '200ms',
  MIN_FREE_BYTES: '1MiB',
  // These tests drive the replicated log with the v1 per-blob records (AllocateWrite, CommitWrite).
  PLACEMENT_GROUPS: '0',
  LOG_LEVEL: process.env.DIRECTORY_TEST_LOG_LEVEL ?? 'info',
};

/** Three (or n) real `haystack directory` processes on one real Redis. */
export class DirectoryCluster {
  readonly procs: (ServerProcess | null)[] = [];
  readonly dataDirs: string[] = [];
  readonly client: DirectoryClient;
  /** The directory as the replication manager calls it (UpdateReplicas, VerifyBlobs are its calls). */
  manager!: DirectoryClient;

  private constructor(
    readonly redis: RedisProcess,
    readonly addresses: string[],
    readonly env: Record<string, string>,
  ) {
    this.client = new DirectoryClient({ addresses, deadlineMs: 20_000, attemptTimeoutMs: 3_000 });
  }

  static async start(opts: { n?: number; env?: Record<string, string> } = {}): Promise<DirectoryCluster> {
    const n = opts.n ?? 3;
    const redis = await RedisProcess.start();
    const ports = await Promise.all(Array.from({ length: n }, () => freePort()));
    const c = new DirectoryCluster(
      redis,
      ports.map((p) => `127.0.0.1:${p}`),
      { ...FAST_ENV, ...opts.env },
    );
    for (let i = 0; i < n; i++) {
      const d = tmpName(`dir${i}`);
      mkdirSync(d, { recursive: true });
      c.dataDirs.push(d);
      c.procs.push(null);
    }
    c.manager = new DirectoryClient({
      addresses: c.addresses,
      deadlineMs: 20_000,
      attemptTimeoutMs: 3_000,
      security: await securityOf({ role: 'replication', id: 'test-manager' }),
    });
    await Promise.all(c.addresses.map((_, i) => c.startOne(i)));
    return c;
  }

  async startOne(i: number): Promise<ServerProcess> {
    const proc = await spawnServer({
      name: `directory-${i}`,
      args: ['directory', '--listen', this.addresses[i] as string, '--data', this.dataDirs[i] as string],
      env: {
        ...this.env,
        DIRECTORY_ID: `directory-${i}`,
        DIRECTORY_PEERS: this.addresses.join(','),
        REDIS_URL: this.redis.url,
      },
      echo: process.env.DIRECTORY_TEST_ECHO === '1',
    });
    this.procs[i] = proc;
    return proc;
  }

  /** A raw DirectoryService client to instance i (as the test's gateway, or `as`). */
  stub(i: number, security?: Parameters<typeof peerTransport>[3]) {
    return createClient(
      DirectoryService,
      peerTransport(this.addresses[i] as string, ['directory'], {}, security),
    );
  }

  /** A raw DirectoryService client to instance i as an operator (admin). */
  async adminStub(i: number) {
    return this.stub(i, await securityOf(TEST_ADMIN));
  }

  /** Index of the instance that reports itself LEADER (waits for one). */
  async waitLeader(timeoutMs = 60_000, except?: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      for (let i = 0; i < this.addresses.length; i++) {
        if (!this.procs[i] || i === except) continue;
        try {
          const st = await this.stub(i).getClusterStatus({ localOnly: true }, { timeoutMs: 2000 });
          if (st.directories[0]?.role === DirectoryRole.LEADER) return i;
        } catch {
          // not up
        }
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no directory leader within ${timeoutMs} ms:\n${this.logs().slice(-6000)}`);
  }

  /** Waits until the leader has `n` registered HEALTHY stores (a write before that is refused). */
  async waitStores(n: number, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const st = await this.client.getClusterStatus().catch(() => undefined);
      if ((st?.stores.filter((s) => s.health === StoreHealth.HEALTHY).length ?? 0) >= n) return;
      if (Date.now() > deadline) throw new Error(`fewer than ${n} healthy stores within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async kill(i: number): Promise<void> {
    await this.procs[i]?.kill();
    this.procs[i] = null;
  }

  logs(): string {
    return this.procs.map((p, i) => `--- directory-${i}\n${p?.logs().slice(-3000) ?? '(down)'}`).join('\n');
  }

  async stop(): Promise<void> {
    await Promise.all(this.procs.map((p) => p?.kill()));
    await this.redis.kill();
  }
}

const quiet = createLogger('test', 'fake-store', process.env.DIRECTORY_TEST_LOG_LEVEL ?? 'silent');

/** A fake store: no volumes, but a real Heartbeat stream (the real store-side client). */
export class FakeStore {
  readonly commands: StoreCommand[] = [];
  freeBytes = 10n * 1024n ** 3n;
  writable = true;
  /** While true the stream stays open but no heartbeat is sent (a hung store). */
  frozen = false;
  private thaw: (() => void) | null = null;
  private hb: StoreHeartbeat | null = null;
  private starting: Promise<void> | undefined;

  constructor(
    readonly id: string,
    readonly directories: string[],
    readonly zone = '',
    readonly intervalMs = 200,
  ) {}

  get address(): string {
    return `127.0.0.1:${20000 + Number(this.id.replace(/\D/g, '') || 0)}`;
  }

  /** Starts heartbeating (as this store: its own certificate, issued first). */
  start(): this {
    this.starting = securityOf({ role: 'store', id: this.id }).then((security) => this.begin(security));
    return this;
  }

  private begin(security: Awaited<ReturnType<typeof securityOf>>): void {
    this.hb = startStoreHeartbeat({
      security,
      storeId: this.id,
      address: this.address,
      zone: this.zone,
      directories: this.directories,
      intervalMs: this.intervalMs,
      log: quiet,
      state: async () => {
        while (this.frozen)
          await new Promise<void>((r) => {
            this.thaw = r;
          });
        return {
          capacityBytes: 20n * 1024n ** 3n,
          freeBytes: this.freeBytes,
          volumes: [],
          writable: this.writable,
        };
      },
      onCommand: async (cmd) => {
        this.commands.push(cmd);
      },
    });
  }

  unfreeze(): void {
    this.frozen = false;
    this.thaw?.();
  }

  /** Cuts the heartbeat stream (the store process "dies"). */
  async stop(): Promise<void> {
    this.unfreeze();
    await this.starting;
    await this.hb?.stop();
    this.hb = null;
  }

  deletedIds(): string[] {
    return this.commands.flatMap((c) => (c.command.case === 'deleteBlobs' ? c.command.value.blobIds : []));
  }
}

/** Writes blobs in a loop (allocate + commit) and records what was acknowledged. */
export class WriteLoad {
  readonly acked = new Map<string, bigint>();
  readonly successes: number[] = [];
  readonly failures: { at: number; message: string }[] = [];
  private stopped = false;
  private runners: Promise<void>[] = [];
  private readonly client: DirectoryClient;

  constructor(
    addresses: string[],
    readonly prefix: string,
    opts: { deadlineMs?: number } = {},
  ) {
    this.client = new DirectoryClient({
      addresses,
      deadlineMs: opts.deadlineMs ?? 1000,
      attemptTimeoutMs: 500,
    });
  }

  start(workers = 3): this {
    for (let w = 0; w < workers; w++) this.runners.push(this.run(w));
    return this;
  }

  private async run(w: number): Promise<void> {
    let n = 0;
    while (!this.stopped) {
      const id = `${this.prefix}-${w}-${n++}`;
      try {
        const a = await this.client.allocateWrite({ blobId: id, size: 10n });
        const r = await this.client.commitWrite({
          blobId: id,
          cookie: a.cookie,
          size: 10n,
          sha256: new Uint8Array(32).fill(w),
          replicas: a.stores.map((s, i) => ({ storeId: s.storeId, volumeId: i + 1 })),
        });
        this.acked.set(id, r.commitIndex);
        this.successes.push(Date.now());
      } catch (err) {
        this.failures.push({ at: Date.now(), message: err instanceof Error ? err.message : String(err) });
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.runners);
  }

  maxIndex(): bigint {
    let m = 0n;
    for (const v of this.acked.values()) if (v > m) m = v;
    return m;
  }
}
