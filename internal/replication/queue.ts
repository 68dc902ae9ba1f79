import { TaskKind, TaskPriority, TaskState } from '../../gen/haystack/v1/replication_pb.js';

/**
 * The manager's work queue. Pure (every call takes the time), so its rules are
 * unit-tested without I/O:
 *
 * - priorities URGENT > HIGH > MEDIUM > LOW, oldest first within one;
 * - one task per (blob, store): enqueueing again raises the priority of the
 *   waiting task (or replaces its kind) instead of adding a second;
 * - a failed attempt is retried after base × 2^(n−1) (capped), up to `retries`
 *   retries, then the task FAILS;
 * - a per-store circuit breaker: failures blamed on a store count up and decay one
 *   per `breakerDecayMs`; at `breakerThreshold` the store gets no tasks until
 *   `breakerOpenMs` passed, then one trial task: success closes it, failure
 *   re-opens it;
 * - at most `perStoreConcurrency` running tasks per store, and at most
 *   `copyWorkers` copies/repairs and `removeWorkers` removals/collections at once,
 *   so replication never starves user traffic.
 */
export interface Task {
  id: string;
  blobId: string;
  /** The store acted on: target of a copy, holder of a removal, corrupt holder of a repair. */
  storeId: string;
  kind: TaskKind;
  priority: TaskPriority;
  state: TaskState;
  attempts: number;
  lastError: string;
  createdAt: number;
  /** Backoff: not before this time. */
  notBefore: number;
  finishedAt?: number;
}

export interface QueueOptions {
  retries: number;
  backoffMs: number;
  backoffMaxMs: number;
  breakerThreshold: number;
  breakerDecayMs: number;
  breakerOpenMs: number;
  perStoreConcurrency: number;
  copyWorkers: number;
  removeWorkers: number;
  /** Finished tasks kept for ListTasks (default 1000). */
  historySize?: number;
}

export interface EnqueueSpec {
  blobId: string;
  storeId: string;
  kind: TaskKind;
  priority: TaskPriority;
}

export interface BreakerState {
  storeId: string;
  open: boolean;
  failures: number;
}

interface Breaker {
  failures: number;
  decayFrom: number;
  openedAt: number | undefined;
  trialRunning: boolean;
}

export const PRIORITIES = [
  TaskPriority.URGENT,
  TaskPriority.HIGH,
  TaskPriority.MEDIUM,
  TaskPriority.LOW,
] as const;

type WorkerClass = 'copy' | 'remove';

export function workerClass(kind: TaskKind): WorkerClass {
  return kind === TaskKind.REPLICATE || kind === TaskKind.REPAIR ? 'copy' : 'remove';
}

const key = (blobId: string, storeId: string) => `${blobId}\u0000${storeId}`;

export class TaskQueue {
  /** Waiting (queued or in backoff) and running tasks by (blob, store). */
  private readonly active = new Map<string, Task>();
  /** Queued tasks ready to run: priority → store → task id → task (insertion = age order). */
  private readonly ready = new Map<TaskPriority, Map<string, Map<string, Task>>>();
  private readonly backoff = new Set<Task>();
  private readonly byId = new Map<string, Task>();
  private readonly byBlob = new Map<string, Set<Task>>();
  private readonly storeRunning = new Map<string, number>();
  private readonly classRunning: Record<WorkerClass, number> = { copy: 0, remove: 0 };
  private readonly breakers = new Map<string, Breaker>();
  private readonly history: Task[] = [];
  private seq = 0;
  completed = 0;
  failed = 0;

  constructor(
    private readonly opts: QueueOptions,
    private readonly idPrefix = 't',
  ) {
    for (const p of PRIORITIES) this.ready.set(p, new Map());
  }

  /** Adds a task, or updates the one already waiting for (blob, store). */
  enqueue(spec: EnqueueSpec, now: number): { task: Task; added: boolean } {
    const k = key(spec.blobId, spec.storeId);
    const existing = this.active.get(k);
    if (existing) {
      if (existing.state === TaskState.RUNNING) return { task: existing, added: false };
      const kindChanged = existing.kind !== spec.kind;
      if (kindChanged || spec.priority < existing.priority) {
        this.unready(existing);
        if (kindChanged) {
          existing.kind = spec.kind;
          existing.attempts = 0;
          existing.lastError = '';
          existing.notBefore = now;
          existing.priority = spec.priority;
          this.backoff.delete(existing);
          existing.state = TaskState.QUEUED;
        } else {
          existing.priority = spec.priority;
        }
        if (existing.state === TaskState.QUEUED) this.makeReady(existing);
      }
      return { task: existing, added: false };
    }
    const task: Task = {
      id: `${this.idPrefix}${++this.seq}`,
      blobId: spec.blobId,
      storeId: spec.storeId,
      kind: spec.kind,
      priority: spec.priority,
      state: TaskState.QUEUED,
      attempts: 0,
      lastError: '',
      createdAt: now,
      notBefore: now,
    };
    this.active.set(k, task);
    this.byId.set(task.id, task);
    let set = this.byBlob.get(task.blobId);
    if (!set) {
      set = new Set();
      this.byBlob.set(task.blobId, set);
    }
    set.add(task);
    this.makeReady(task);
    return { task, added: true };
  }

  private makeReady(task: Task): void {
    const byStore = this.ready.get(task.priority)!;
    let m = byStore.get(task.storeId);
    if (!m) {
      m = new Map();
      byStore.set(task.storeId, m);
    }
    m.set(task.id, task);
  }

  private unready(task: Task): void {
    const byStore = this.ready.get(task.priority)!;
    const m = byStore.get(task.storeId);
    if (!m) return;
    m.delete(task.id);
    if (m.size === 0) byStore.delete(task.storeId);
  }

  private breaker(storeId: string, now: number): Breaker {
    let b = this.breakers.get(storeId);
    if (!b) {
      b = { failures: 0, decayFrom: now, openedAt: undefined, trialRunning: false };
      this.breakers.set(storeId, b);
    }
    // Lazy decay: one failure forgotten per decay period.
    const periods = Math.floor((now - b.decayFrom) / this.opts.breakerDecayMs);
    if (periods > 0) {
      b.failures = Math.max(0, b.failures - periods);
      b.decayFrom += periods * this.opts.breakerDecayMs;
    }
    if (b.failures === 0) b.decayFrom = now;
    if (b.failures < this.opts.breakerThreshold && !b.trialRunning) b.openedAt = undefined;
    return b;
  }

  private isOpen(b: Breaker): boolean {
    return b.openedAt !== undefined;
  }

  /** True while the store's breaker is open (placement avoids it). */
  isBlocked(storeId: string, now: number): boolean {
    return this.breakers.has(storeId) && this.isOpen(this.breaker(storeId, now));
  }

  /** Whether the store may get a task now (closed, or open long enough for one trial). */
  private storeAccepts(storeId: string, now: number): boolean {
    if ((this.storeRunning.get(storeId) ?? 0) >= this.opts.perStoreConcurrency) return false;
    const b = this.breaker(storeId, now);
    if (!this.isOpen(b)) return true;
    return !b.trialRunning && now - (b.openedAt ?? now) >= this.opts.breakerOpenMs;
  }

  /** Moves tasks whose backoff ended back to ready. */
  private promote(now: number): void {
    for (const t of this.backoff) {
      if (t.notBefore <= now) {
        this.backoff.delete(t);
        t.state = TaskState.QUEUED;
        this.makeReady(t);
      }
    }
  }

  /**
   * The next task to run, marked RUNNING: highest priority first, oldest first
   * among stores that accept work; undefined when nothing may run now.
   */
  take(now: number): Task | undefined {
    this.promote(now);
    const full: Record<WorkerClass, boolean> = {
      copy: this.classRunning.copy >= this.opts.copyWorkers,
      remove: this.classRunning.remove >= this.opts.removeWorkers,
    };
    if (full.copy && full.remove) return undefined;
    for (const p of PRIORITIES) {
      let best: Task | undefined;
      for (const [storeId, tasks] of this.ready.get(p)!) {
        if (!this.storeAccepts(storeId, now)) continue;
        for (const t of tasks.values()) {
          if (full[workerClass(t.kind)]) continue;
          if (!best || t.createdAt < best.createdAt) best = t;
          break;
        }
      }
      if (best) {
        this.start(best, now);
        return best;
      }
    }
    return undefined;
  }

  private start(t: Task, now: number): void {
    this.unready(t);
    t.state = TaskState.RUNNING;
    t.attempts++;
    this.storeRunning.set(t.storeId, (this.storeRunning.get(t.storeId) ?? 0) + 1);
    this.classRunning[workerClass(t.kind)]++;
    const b = this.breaker(t.storeId, now);
    if (this.isOpen(b)) b.trialRunning = true;
  }

  private stop(t: Task): void {
    const n = (this.storeRunning.get(t.storeId) ?? 1) - 1;
    if (n <= 0) this.storeRunning.delete(t.storeId);
    else this.storeRunning.set(t.storeId, n);
    this.classRunning[workerClass(t.kind)]--;
  }

  private retire(t: Task, state: TaskState, now: number): void {
    t.state = state;
    t.finishedAt = now;
    this.active.delete(key(t.blobId, t.storeId));
    this.byId.delete(t.id);
    const set = this.byBlob.get(t.blobId);
    set?.delete(t);
    if (set?.size === 0) this.byBlob.delete(t.blobId);
    this.history.push(t);
    const cap = this.opts.historySize ?? 1000;
    if (this.history.length > cap) this.history.splice(0, this.history.length - cap);
  }

  /** A running task succeeded. */
  complete(id: string, now: number): void {
    const t = this.byId.get(id);
    if (!t || t.state !== TaskState.RUNNING) return;
    this.stop(t);
    const b = this.breaker(t.storeId, now);
    if (b.trialRunning) {
      b.trialRunning = false;
      b.failures = 0;
      b.openedAt = undefined;
    }
    this.completed++;
    this.retire(t, TaskState.DONE, now);
  }

  /**
   * A running task failed. `storeFault` counts it against the store's breaker;
   * `retryable: false` gives up at once. Returns what happened to the task.
   */
  fail(
    id: string,
    error: string,
    now: number,
    o: { storeFault: boolean; retryable: boolean },
  ): 'retry' | 'failed' | 'unknown' {
    const t = this.byId.get(id);
    if (!t || t.state !== TaskState.RUNNING) return 'unknown';
    this.stop(t);
    t.lastError = error;
    const b = this.breaker(t.storeId, now);
    const wasTrial = b.trialRunning;
    b.trialRunning = false;
    if (o.storeFault) {
      if (b.failures === 0) b.decayFrom = now;
      b.failures++;
      if (wasTrial || b.failures >= this.opts.breakerThreshold) b.openedAt = now;
    }
    if (!o.retryable || t.attempts > this.opts.retries) {
      this.failed++;
      this.retire(t, TaskState.FAILED, now);
      return 'failed';
    }
    t.state = TaskState.BACKOFF;
    t.notBefore = now + this.backoffDelay(t.attempts);
    this.backoff.add(t);
    return 'retry';
  }

  /** Backoff after the n-th failed attempt: base × 2^(n−1), capped. */
  backoffDelay(n: number): number {
    return Math.min(this.opts.backoffMaxMs, this.opts.backoffMs * 2 ** Math.max(0, n - 1));
  }

  /** Drops waiting tasks of a blob (e.g. it was deleted); running ones finish on their own. */
  cancelBlob(blobId: string, now: number, predicate: (t: Task) => boolean = () => true): number {
    let n = 0;
    for (const t of [...(this.byBlob.get(blobId) ?? [])]) {
      if (t.state === TaskState.RUNNING || !predicate(t)) continue;
      this.unready(t);
      this.backoff.delete(t);
      t.lastError = t.lastError || 'cancelled';
      this.retire(t, TaskState.FAILED, now);
      n++;
    }
    return n;
  }

  /** Drops every waiting task (the manager lost its lease). */
  clear(now: number): void {
    for (const t of [...this.active.values()]) {
      if (t.state === TaskState.RUNNING) continue;
      this.unready(t);
      this.backoff.delete(t);
      t.lastError = 'manager lost its lease';
      this.retire(t, TaskState.FAILED, now);
    }
  }

  get(id: string): Task | undefined {
    return this.byId.get(id) ?? this.history.find((t) => t.id === id);
  }

  /** Waiting and running tasks of a blob. */
  forBlob(blobId: string): Task[] {
    return [...(this.byBlob.get(blobId) ?? [])];
  }

  /** The waiting or running task for (blob, store), if any. */
  find(blobId: string, storeId: string): Task | undefined {
    return this.active.get(key(blobId, storeId));
  }

  /** Tasks waiting (queued or backoff) by priority. */
  depth(): Map<TaskPriority, number> {
    const d = new Map<TaskPriority, number>(PRIORITIES.map((p) => [p, 0]));
    for (const t of this.active.values()) {
      if (t.state !== TaskState.RUNNING) d.set(t.priority, (d.get(t.priority) ?? 0) + 1);
    }
    return d;
  }

  get inFlight(): number {
    return this.classRunning.copy + this.classRunning.remove;
  }

  /** Waiting or running tasks. */
  get pending(): number {
    return this.active.size;
  }

  /**
   * Tasks in `state` (or every unfinished one when undefined), highest priority
   * first, then oldest; finished ones newest first.
   */
  list(state: TaskState | undefined, limit: number): Task[] {
    if (state === TaskState.DONE || state === TaskState.FAILED) {
      return this.history
        .filter((t) => t.state === state)
        .reverse()
        .slice(0, limit);
    }
    return [...this.active.values()]
      .filter((t) => state === undefined || t.state === state)
      .sort((a, b) => a.priority - b.priority || a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1))
      .slice(0, limit);
  }

  breakerStates(now: number): BreakerState[] {
    return [...this.breakers.keys()].sort().map((storeId) => {
      const b = this.breaker(storeId, now);
      return { storeId, open: this.isOpen(b), failures: b.failures };
    });
  }

  /** Earliest time something waiting could become runnable (backoff end, breaker trial). */
  nextWakeAt(now: number): number | undefined {
    let at: number | undefined;
    for (const t of this.backoff) at = at === undefined ? t.notBefore : Math.min(at, t.notBefore);
    for (const [storeId, b] of this.breakers) {
      if (b.openedAt !== undefined && !b.trialRunning && this.hasReadyFor(storeId)) {
        const trial = b.openedAt + this.opts.breakerOpenMs;
        at = at === undefined ? trial : Math.min(at, trial);
      }
    }
    if (at !== undefined) at = Math.max(at, now);
    return at;
  }

  private hasReadyFor(storeId: string): boolean {
    for (const byStore of this.ready.values()) if (byStore.has(storeId)) return true;
    return false;
  }

  /** Running count per store (load, for source and victim choice). */
  runningOn(storeId: string): number {
    return this.storeRunning.get(storeId) ?? 0;
  }
}
