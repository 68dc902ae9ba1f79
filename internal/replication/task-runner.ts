import { TaskKind } from '../../gen/haystack/v1/replication_pb.js';
import { KeyLock } from '../common/key-lock.js';
import type { Logger } from '../server/logger.js';
import type { ReplicationConfig } from './config.js';
import { pairKey } from './gc-rules.js';
import type { ManagerEvents } from './manager-env.js';
import { type Task, TaskQueue } from './queue.js';
import { TaskError } from './store-calls.js';

export type TaskOutcome = 'done' | 'retry' | 'failed';

/**
 * Runs the manager's task queue (queue.ts: priorities, per-store concurrency,
 * retries with backoff, circuit breakers): pump() starts every task that may run
 * now and sets one timer for the next one due; each task runs through `execute`,
 * and its outcome goes back to the queue (a TaskError says whether to retry and
 * whether the store is at fault; any other error is retried). A REPLICATE that
 * failed for good makes the next copy go elsewhere for RETRY_BACKOFF_MAX
 * (`avoid`); then the blob is planned again (`after`).
 *
 * A fresh queue is made each time the lease is taken (task ids are prefixed
 * `<manager id>-<generation>-`); a task of an older queue ends without follow-up.
 * Side effects on one (blob, store) pair run one at a time (`exclusive`): no
 * tombstone lands between a copy and its commit.
 */
export class TaskRunner {
  queue: TaskQueue;
  private generation = 0;
  private wakeTimer: NodeJS.Timeout | undefined;
  private readonly pairs = new KeyLock();

  constructor(
    private readonly o: {
      cfg: ReplicationConfig;
      log: Logger;
      events: ManagerEvents;
      now(): number;
      /** May start tasks (lease held and valid). */
      acting(): boolean;
      /** Still the active instance (follow-ups are planned). */
      active(): boolean;
      execute(t: Task): Promise<void>;
      avoid(blobId: string, storeId: string, until: number): void;
      after(blobId: string, now: number): void;
    },
  ) {
    this.queue = this.fresh();
  }

  /** Replaces the queue (lease taken again). */
  fresh(): TaskQueue {
    const c = this.o.cfg;
    this.queue = new TaskQueue(
      {
        retries: c.taskRetries,
        backoffMs: c.retryBackoffMs,
        backoffMaxMs: c.retryBackoffMaxMs,
        breakerThreshold: c.breakerThreshold,
        breakerDecayMs: c.breakerDecayMs,
        breakerOpenMs: c.breakerOpenMs,
        perStoreConcurrency: c.perStoreConcurrency,
        copyWorkers: c.replicationWorkers,
        removeWorkers: c.deReplicationWorkers,
      },
      `${c.managerId}-${++this.generation}-`,
    );
    return this.queue;
  }

  /** Drops every waiting task and the wake-up (lease lost). */
  stop(): void {
    this.queue.clear(this.o.now());
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
  }

  /** Starts every task that may run now and arranges a wake-up for the rest. */
  pump(): void {
    if (!this.o.acting()) return;
    const now = this.o.now();
    for (let t = this.queue.take(now); t; t = this.queue.take(now)) void this.run(t, this.queue);
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    const at = this.queue.nextWakeAt(now);
    if (at !== undefined) {
      this.wakeTimer = setTimeout(() => this.pump(), Math.max(10, at - now));
      this.wakeTimer.unref();
    }
  }

  private async run(t: Task, queue: TaskQueue): Promise<void> {
    const o = this.o;
    let outcome: TaskOutcome = 'done';
    try {
      await o.execute(t);
      queue.complete(t.id, o.now());
    } catch (err) {
      const te =
        err instanceof TaskError
          ? err
          : new TaskError(err instanceof Error ? err.message : String(err), {
              storeFault: false,
              retryable: true,
            });
      const r = queue.fail(t.id, te.message, o.now(), te.o);
      outcome = r === 'retry' ? 'retry' : 'failed';
      if (outcome === 'failed' && t.kind === TaskKind.REPLICATE) {
        // Place the next copy elsewhere for a while instead of failing here again at once.
        o.avoid(t.blobId, t.storeId, o.now() + o.cfg.retryBackoffMaxMs);
      }
      o.log[outcome === 'failed' ? 'warn' : 'debug'](
        {
          task: t.id,
          kind: TaskKind[t.kind],
          blob: t.blobId,
          store: t.storeId,
          err: te.message,
          attempts: t.attempts,
        },
        outcome === 'failed' ? 'task failed' : 'task attempt failed',
      );
    }
    o.events.onTaskFinished?.(t, outcome);
    if (queue !== this.queue || !o.active()) return;
    o.after(t.blobId, o.now());
    this.pump();
  }

  /** Runs `fn` alone on the (blob, store) pair. */
  async exclusive<T>(blobId: string, storeId: string, fn: () => Promise<T>): Promise<T> {
    const release = await this.pairs.acquire(pairKey(blobId, storeId));
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
