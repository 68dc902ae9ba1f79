import { create } from '@bufbuild/protobuf';
import { type Client, ConnectError } from '@connectrpc/connect';
import {
  ReplicationService,
  type ReportAccessRequest,
  ReportAccessRequestSchema,
  ReporterKind,
} from '../../gen/haystack/v1/replication_pb.js';
import { sleep } from '../common/sleep.js';
import { ClientPool } from '../rpc/clients.js';

export { ReporterKind };

/** The logger calls the reporter makes (a pino logger fits). */
export interface ReporterLog {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface AccessReporterOptions {
  /** Store id or gateway id. */
  reporterId: string;
  kind: ReporterKind;
  /** Replication manager instances (host:port); the stream goes to the active one. */
  managers: string[];
  /** Batch period (STATS_REPORT_INTERVAL). */
  intervalMs: number;
  /** Distinct blobs counted per interval; reads of further blobs are dropped (default 100 000). */
  maxBlobsPerBatch?: number;
  /** Batches buffered while the stream is slow; older ones are dropped beyond (default 2). */
  maxQueuedBatches?: number;
  log?: ReporterLog;
  pool?: ClientPool;
}

/**
 * Counts reads per blob and streams the counts to the active replication manager
 * (ReportAccess, one long-lived client stream) every interval. While no manager
 * takes the stream the counts are dropped, never buffered without bound: heat is
 * a rate, and a lost interval only makes it lag. Finds the active manager by
 * asking each for GetStats; reconnects with backoff.
 *
 * Also forwards corruption reports (ReportCorruption) to the active manager.
 *
 * Use: `const r = new AccessReporter({...}); r.start(); ... r.count(blobId); ... await r.stop();`
 */
export class AccessReporter {
  private counts = new Map<string, number>();
  private lastFlush = performance.now();
  private timer: NodeJS.Timeout | undefined;
  private channel: Channel<ReportAccessRequest> | undefined;
  private readonly stopCtl = new AbortController();
  private running = false;
  private loopDone: Promise<void> = Promise.resolve();
  private readonly pool: ClientPool;
  private activeAddress: string | undefined;
  /** Reads not delivered (no manager, over the cap, or a slow stream). */
  dropped = 0;
  /** Batches handed to an open stream. */
  sentBatches = 0;

  constructor(private readonly opts: AccessReporterOptions) {
    this.pool = opts.pool ?? new ClientPool();
  }

  /** Counts `n` reads of a blob. Cheap: a map increment. */
  count(blobId: string, n = 1): void {
    const cur = this.counts.get(blobId);
    if (cur !== undefined) this.counts.set(blobId, cur + n);
    else if (this.counts.size < (this.opts.maxBlobsPerBatch ?? 100_000)) this.counts.set(blobId, n);
    else this.dropped += n;
  }

  /** True while a stream to a manager is open. */
  get connected(): boolean {
    return this.channel !== undefined;
  }

  /** The manager the stream goes to, if any. */
  get manager(): string | undefined {
    return this.channel ? this.activeAddress : undefined;
  }

  start(): void {
    if (this.running || this.opts.managers.length === 0) return;
    this.running = true;
    this.lastFlush = performance.now();
    this.timer = setInterval(() => this.flush(), this.opts.intervalMs);
    this.timer.unref();
    this.loopDone = this.loop();
  }

  /** Sends what was counted since the last batch (called by the timer). */
  flush(): void {
    const now = performance.now();
    const intervalMs = Math.max(1, Math.round(now - this.lastFlush));
    this.lastFlush = now;
    const counts = this.counts;
    this.counts = new Map();
    const ch = this.channel;
    const total = () => [...counts.values()].reduce((a, b) => a + b, 0);
    if (!ch) {
      this.dropped += total();
      return;
    }
    const batch = create(ReportAccessRequestSchema, {
      reporterId: this.opts.reporterId,
      kind: this.opts.kind,
      intervalMs,
      counts: [...counts].map(([blobId, count]) => ({ blobId, count: BigInt(count) })),
    });
    const evicted = ch.offer(batch);
    if (evicted) this.dropped += evicted.counts.reduce((a, c) => a + Number(c.count), 0);
    else this.sentBatches++;
  }

  private async loop(): Promise<void> {
    let backoff = 100;
    const maxBackoff = Math.min(5_000, Math.max(500, this.opts.intervalMs));
    while (this.running) {
      const address = await this.findActive();
      if (!address) {
        await sleep(backoff, this.stopCtl.signal);
        backoff = Math.min(maxBackoff, backoff * 2);
        continue;
      }
      const ch = new Channel<ReportAccessRequest>(this.opts.maxQueuedBatches ?? 2);
      this.channel = ch;
      const opened = performance.now();
      try {
        const client: Client<typeof ReplicationService> = this.pool.client(ReplicationService, address);
        this.opts.log?.info({ manager: address }, 'access report stream open');
        await client.reportAccess(ch, { signal: this.stopCtl.signal });
      } catch (err) {
        if (this.running) {
          this.opts.log?.debug(
            { manager: address, err: ConnectError.from(err).message },
            'access report stream ended',
          );
        }
      } finally {
        this.channel = undefined;
        ch.close();
      }
      this.activeAddress = undefined;
      if (performance.now() - opened > 2 * this.opts.intervalMs) backoff = 100;
      await sleep(backoff, this.stopCtl.signal);
      backoff = Math.min(maxBackoff, backoff * 2);
    }
  }

  /** The manager that says it is active (the last one known first). */
  private async findActive(): Promise<string | undefined> {
    const last = this.activeAddress;
    const order = last ? [last, ...this.opts.managers.filter((a) => a !== last)] : this.opts.managers;
    for (const address of order) {
      if (!this.running) return undefined;
      try {
        const client = this.pool.client(ReplicationService, address);
        const res = await client.getStats({}, { timeoutMs: 2_000, signal: this.stopCtl.signal });
        if (res.active) {
          this.activeAddress = address;
          return address;
        }
      } catch {
        // Try the next one.
      }
    }
    return undefined;
  }

  /** Reports corrupt needles found on this store to the active manager. */
  async reportCorruption(storeId: string, blobIds: string[]): Promise<number> {
    let last: unknown = new Error('no replication manager configured');
    const order = this.activeAddress
      ? [this.activeAddress, ...this.opts.managers.filter((a) => a !== this.activeAddress)]
      : this.opts.managers;
    for (const address of order) {
      try {
        const res = await this.pool
          .client(ReplicationService, address)
          .reportCorruption({ storeId, blobIds }, { timeoutMs: 5_000 });
        return res.tasksEnqueued;
      } catch (err) {
        last = err;
      }
    }
    throw last;
  }

  /** Sends the last partial batch, closes the stream, stops. */
  async stop(): Promise<void> {
    if (!this.running) return;
    if (this.timer) clearInterval(this.timer);
    this.flush();
    this.running = false;
    const ch = this.channel;
    if (ch) {
      ch.close();
      // Give the stream a moment to deliver the last batch and end cleanly.
      await Promise.race([this.loopDone, sleep(1_000)]);
    }
    this.stopCtl.abort();
    await this.loopDone;
  }
}

/**
 * A small bounded queue read as an async iterable: offer() never waits; when full
 * the oldest item is evicted (and returned) so the newest counts win.
 */
class Channel<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private closed = false;
  private wake: (() => void) | undefined;

  constructor(private readonly capacity: number) {}

  offer(item: T): T | undefined {
    if (this.closed) return item;
    this.items.push(item);
    const evicted = this.items.length > this.capacity ? this.items.shift() : undefined;
    this.wake?.();
    return evicted;
  }

  close(): void {
    this.closed = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.closed) return;
      await new Promise<void>((r) => {
        this.wake = r;
      });
      this.wake = undefined;
    }
  }
}
