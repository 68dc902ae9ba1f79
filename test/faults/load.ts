import { payload, Rng } from '../../bench/workload.js';
import type { HaystackClient } from '../../internal/sdk/index.js';
import { type OpLog, sha256hex } from './oplog.js';

export interface OpSample {
  kind: 'write' | 'read' | 'delete';
  /** Date.now() at start and end. */
  start: number;
  end: number;
  ok: boolean;
  error?: string;
}

export interface MixedLoadOptions {
  writers: number;
  readers: number;
  deleters: number;
  seed: number;
  /** Hard bounds: the load stops by itself after this many operations or this long. */
  maxOps: number;
  maxMs: number;
}

const errName = (err: unknown): string => {
  const e = err as { codeName?: string; message?: string };
  return e?.codeName ?? (e?.message ?? String(err)).slice(0, 100);
};

/**
 * A mixed read/write/delete load through the SDK, logging every operation's
 * outcome in the OpLog. Writes upload fresh content (1 KiB – 96 KiB, a third of
 * the blobs reserved for deletion); reads check the SHA-256 of what they get;
 * deletes remove acknowledged doomed blobs. Bounded in count and time.
 */
export class MixedLoad {
  readonly samples: OpSample[] = [];
  /** Reads that returned other bytes than acknowledged (must stay empty). */
  readonly wrongReads: string[] = [];
  private stopped = false;
  private ops = 0;
  private readonly done: Promise<void>;
  private readonly deadline: number;

  constructor(
    private readonly sdk: HaystackClient,
    private readonly log: OpLog,
    private readonly o: MixedLoadOptions,
  ) {
    this.deadline = Date.now() + o.maxMs;
    const root = new Rng(o.seed);
    let seq = 0;
    const loops: Promise<void>[] = [];
    for (let w = 0; w < o.writers; w++) {
      const rng = root.fork(w);
      loops.push(
        this.loop('write', async () => {
          const n = seq++;
          const size = 1024 + rng.int(95 * 1024);
          const data = payload(size, (o.seed * 1_000_003 + n) >>> 0);
          const sha = sha256hex(data);
          this.log.beginWrite(sha, sha, size, n % 3 === 0);
          try {
            const b = await this.sdk.upload(data, { sha256: sha, timeoutMs: 20_000 });
            if (b.sha256 !== sha || b.id !== sha) throw new Error(`stored as ${b.id} with ${b.sha256}`);
            this.log.endWrite(sha, true);
          } catch (err) {
            this.log.endWrite(sha, false);
            throw err;
          }
          return undefined;
        }),
      );
    }
    for (let r = 0; r < o.readers; r++) {
      const rng = root.fork(100 + r);
      loops.push(
        this.loop('read', async () => {
          const b = this.log.pickReadable(() => rng.next());
          if (!b) {
            await new Promise((res) => setTimeout(res, 20));
            return 'idle';
          }
          const { data } = await this.sdk.download(b.id, { timeoutMs: 20_000 });
          if (sha256hex(data) !== b.sha) {
            this.wrongReads.push(b.id);
            throw new Error(`read of ${b.id} returned other bytes`);
          }
          return undefined;
        }),
      );
    }
    for (let d = 0; d < o.deleters; d++) {
      const rng = root.fork(200 + d);
      loops.push(
        this.loop('delete', async () => {
          const b = this.log.takeDeletable(() => rng.next());
          if (!b) {
            await new Promise((res) => setTimeout(res, 50));
            return 'idle';
          }
          try {
            await this.sdk.delete(b.id, { timeoutMs: 20_000 });
            this.log.endDelete(b.id, true);
          } catch (err) {
            this.log.endDelete(b.id, false);
            throw err;
          }
          // Deletes are rarer than writes.
          await new Promise((res) => setTimeout(res, 100));
          return undefined;
        }),
      );
    }
    this.done = Promise.all(loops).then(() => {});
  }

  private async loop(kind: OpSample['kind'], op: () => Promise<'idle' | undefined>): Promise<void> {
    while (!this.stopped && this.ops < this.o.maxOps && Date.now() < this.deadline) {
      const start = Date.now();
      try {
        if ((await op()) === 'idle') continue;
        this.ops++;
        this.samples.push({ kind, start, end: Date.now(), ok: true });
      } catch (err) {
        this.ops++;
        this.samples.push({ kind, start, end: Date.now(), ok: false, error: errName(err) });
        await new Promise((res) => setTimeout(res, 50));
      }
    }
  }

  /** Why the load stopped by itself ('' while running). */
  get endReason(): string {
    if (this.stopped) return 'stopped';
    if (this.ops >= this.o.maxOps) return `maxOps ${this.o.maxOps} reached`;
    if (Date.now() >= this.deadline) return `maxMs ${this.o.maxMs} reached`;
    return '';
  }

  get running(): boolean {
    return !this.stopped && this.ops < this.o.maxOps && Date.now() < this.deadline;
  }

  async stop(): Promise<OpSample[]> {
    this.stopped = true;
    await this.done;
    return this.samples;
  }
}
