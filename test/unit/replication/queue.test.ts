import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TaskKind, TaskPriority, TaskState } from '../../../gen/haystack/v1/replication_pb.js';
import { type QueueOptions, TaskQueue } from '../../../internal/replication/queue.js';

const opts: QueueOptions = {
  retries: 3,
  backoffMs: 5000,
  backoffMaxMs: 60_000,
  breakerThreshold: 3,
  breakerDecayMs: 600_000,
  breakerOpenMs: 30_000,
  perStoreConcurrency: 2,
  copyWorkers: 5,
  removeWorkers: 2,
};

const copy = (blobId: string, storeId: string, priority = TaskPriority.MEDIUM) => ({
  blobId,
  storeId,
  kind: TaskKind.REPLICATE,
  priority,
});

describe('TaskQueue', () => {
  it('runs the highest priority first, oldest first within one', () => {
    const q = new TaskQueue({ ...opts, perStoreConcurrency: 10 });
    q.enqueue(copy('a', 's1', TaskPriority.LOW), 1);
    q.enqueue(copy('b', 's2', TaskPriority.MEDIUM), 2);
    q.enqueue(copy('c', 's3', TaskPriority.URGENT), 3);
    q.enqueue(copy('d', 's4', TaskPriority.URGENT), 4);
    q.enqueue(copy('e', 's5', TaskPriority.HIGH), 5);
    const order = [1, 2, 3, 4, 5].map(() => q.take(10)?.blobId);
    expect(order).toEqual(['c', 'd', 'e', 'b', 'a']);
  });

  it('deduplicates per (blob, store) and raises the priority', () => {
    const q = new TaskQueue(opts);
    const a = q.enqueue(copy('a', 's1', TaskPriority.LOW), 1);
    const b = q.enqueue(copy('a', 's1', TaskPriority.URGENT), 2);
    expect(b.added).toBe(false);
    expect(b.task.id).toBe(a.task.id);
    expect(q.depth().get(TaskPriority.URGENT)).toBe(1);
    expect(q.depth().get(TaskPriority.LOW)).toBe(0);
    expect(q.enqueue(copy('a', 's2'), 3).added).toBe(true);
    expect(q.pending).toBe(2);
  });

  it('retries with exponential backoff, capped, then fails', () => {
    const q = new TaskQueue({ ...opts, retries: 5, backoffMaxMs: 20_000 });
    q.enqueue(copy('a', 's1'), 0);
    let now = 0;
    const delays: number[] = [];
    for (;;) {
      const t = q.take(now);
      expect(t).toBeDefined();
      const r = q.fail(t!.id, 'boom', now, { storeFault: false, retryable: true });
      if (r === 'failed') break;
      const next = q.nextWakeAt(now)!;
      delays.push(next - now);
      expect(q.take(next - 1)).toBeUndefined();
      now = next;
    }
    expect(delays).toEqual([5000, 10_000, 20_000, 20_000, 20_000]);
    expect(q.failed).toBe(1);
    expect(q.list(TaskState.FAILED, 10)[0]?.attempts).toBe(6);
  });

  it('bounds concurrent tasks per store and per worker class', () => {
    const q = new TaskQueue({ ...opts, perStoreConcurrency: 2, copyWorkers: 3, removeWorkers: 1 });
    for (let i = 0; i < 5; i++) q.enqueue(copy(`b${i}`, 's1'), i);
    for (let i = 0; i < 5; i++) q.enqueue(copy(`c${i}`, 's2'), 10 + i);
    for (let i = 0; i < 3; i++)
      q.enqueue(
        { blobId: `r${i}`, storeId: 's3', kind: TaskKind.REMOVE, priority: TaskPriority.LOW },
        20 + i,
      );
    const taken = [];
    for (let t = q.take(100); t; t = q.take(100)) taken.push(t);
    expect(taken.filter((t) => t.storeId === 's1')).toHaveLength(2);
    expect(taken.filter((t) => t.kind === TaskKind.REPLICATE)).toHaveLength(3);
    expect(taken.filter((t) => t.kind === TaskKind.REMOVE)).toHaveLength(1);
    expect(q.inFlight).toBe(4);
    q.complete(taken[0]!.id, 101);
    expect(q.take(101)).toBeDefined();
  });

  it('opens a circuit breaker on a failing store, lets one trial through later, closes on success', () => {
    const q = new TaskQueue({ ...opts, breakerThreshold: 2, retries: 10, perStoreConcurrency: 10 });
    for (let i = 0; i < 4; i++) q.enqueue(copy(`b${i}`, 'bad'), i);
    q.enqueue(copy('x', 'good'), 10);
    let now = 100;
    for (let i = 0; i < 2; i++) {
      const t = q.take(now)!;
      expect(t.storeId).toBe('bad');
      q.fail(t.id, 'unavailable', now, { storeFault: true, retryable: true });
    }
    expect(q.breakerStates(now).find((b) => b.storeId === 'bad')).toEqual({
      storeId: 'bad',
      open: true,
      failures: 2,
    });
    // Only the healthy store gets work while the breaker is open.
    expect(q.take(now)?.storeId).toBe('good');
    expect(q.take(now)).toBeUndefined();
    now += 30_000;
    const trial = q.take(now)!;
    expect(trial.storeId).toBe('bad');
    expect(q.take(now)).toBeUndefined(); // one trial at a time
    q.complete(trial.id, now);
    expect(q.breakerStates(now).find((b) => b.storeId === 'bad')?.open).toBe(false);
    expect(q.take(now)?.storeId).toBe('bad');
  });

  it('forgets one breaker failure per decay period', () => {
    const q = new TaskQueue({ ...opts, breakerThreshold: 10, retries: 10 });
    q.enqueue(copy('a', 's'), 0);
    for (let i = 0; i < 3; i++) {
      const t = q.take(q.nextWakeAt(0) ?? 0)!;
      q.fail(t.id, 'x', 0, { storeFault: true, retryable: true });
    }
    expect(q.breakerStates(0)[0]?.failures).toBe(3);
    expect(q.breakerStates(600_000)[0]?.failures).toBe(2);
    expect(q.breakerStates(1_800_000)[0]?.failures).toBe(0);
  });

  it('keeps its books straight under any sequence of operations', () => {
    const op = fc.oneof(
      fc.record({
        t: fc.constant('enq' as const),
        blob: fc.integer({ min: 0, max: 5 }),
        store: fc.integer({ min: 0, max: 3 }),
        p: fc.integer({ min: 1, max: 4 }),
        remove: fc.boolean(),
      }),
      fc.record({ t: fc.constant('take' as const) }),
      fc.record({ t: fc.constant('done' as const), ok: fc.boolean(), fault: fc.boolean() }),
      fc.record({ t: fc.constant('tick' as const), ms: fc.integer({ min: 0, max: 100_000 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 150 }), (ops) => {
        const q = new TaskQueue({ ...opts, perStoreConcurrency: 1, copyWorkers: 2, removeWorkers: 1 });
        let now = 0;
        const running: string[] = [];
        for (const o of ops) {
          if (o.t === 'enq') {
            q.enqueue(
              {
                blobId: `b${o.blob}`,
                storeId: `s${o.store}`,
                kind: o.remove ? TaskKind.REMOVE : TaskKind.REPLICATE,
                priority: o.p as TaskPriority,
              },
              now,
            );
          } else if (o.t === 'take') {
            const t = q.take(now);
            if (t) running.push(t.id);
          } else if (o.t === 'done') {
            const id = running.shift();
            if (id && o.ok) q.complete(id, now);
            else if (id) q.fail(id, 'x', now, { storeFault: o.fault, retryable: true });
          } else now += o.ms;
          // Invariants: limits hold; one active task per (blob, store); counts add up.
          const active = q.list(undefined, 10_000);
          const keys = new Set(active.map((t) => `${t.blobId}/${t.storeId}`));
          expect(keys.size).toBe(active.length);
          const run = active.filter((t) => t.state === TaskState.RUNNING);
          expect(run.length).toBe(q.inFlight);
          expect(run.length).toBe(running.length);
          expect(run.filter((t) => t.kind === TaskKind.REMOVE).length).toBeLessThanOrEqual(1);
          expect(run.filter((t) => t.kind === TaskKind.REPLICATE).length).toBeLessThanOrEqual(2);
          for (const s of new Set(run.map((t) => t.storeId))) {
            expect(run.filter((t) => t.storeId === s).length).toBeLessThanOrEqual(1);
          }
          const waiting = [...q.depth().values()].reduce((a, b) => a + b, 0);
          expect(waiting + run.length).toBe(q.pending);
        }
      }),
    );
  });
});
