import { Counter, Gauge, type Registry } from 'prom-client';
import { TaskKind, TaskPriority } from '../../gen/haystack/v1/replication_pb.js';
import type { ManagerEvents, ReplicationManager } from './manager.js';
import { PRIORITIES } from './queue.js';

/**
 * Prometheus metrics of the replication manager (on the process's /metrics):
 * the same figures as GetStats, read at scrape time, plus event counters.
 */
export function replicationMetrics(registry: Registry, getManager: () => ReplicationManager): ManagerEvents {
  const registers = [registry];
  new Gauge({
    name: 'haystack_replication_active',
    help: '1 on the instance holding the manager lease',
    registers,
    collect() {
      this.set(getManager().active ? 1 : 0);
    },
  });
  new Gauge({
    name: 'haystack_replication_queue_depth',
    help: 'Tasks waiting (queued or in backoff), by priority',
    labelNames: ['priority'],
    registers,
    collect() {
      const d = getManager().queue.depth();
      for (const p of PRIORITIES) this.set({ priority: TaskPriority[p].toLowerCase() }, d.get(p) ?? 0);
    },
  });
  new Gauge({
    name: 'haystack_replication_tasks_in_flight',
    help: 'Tasks running',
    registers,
    collect() {
      this.set(getManager().queue.inFlight);
    },
  });
  new Gauge({
    name: 'haystack_replication_tracked_blobs',
    help: 'Blobs whose access heat is tracked',
    registers,
    collect() {
      this.set(getManager().heat.size);
    },
  });
  new Gauge({
    name: 'haystack_replication_hot_blobs',
    help: 'Blobs whose committed target is above the default replica count',
    registers,
    collect() {
      this.set(getManager().raisedCount());
    },
  });
  new Gauge({
    name: 'haystack_replication_breaker_open',
    help: '1 while a store circuit breaker is open',
    labelNames: ['store'],
    registers,
    collect() {
      this.reset();
      for (const b of getManager().queue.breakerStates(Date.now()))
        this.set({ store: b.storeId }, b.open ? 1 : 0);
    },
  });
  new Gauge({
    name: 'haystack_replication_applied_index',
    help: 'Directory metadata log index applied',
    registers,
    collect() {
      this.set(Number(getManager().mirror.appliedIndex));
    },
  });
  const tasks = new Counter({
    name: 'haystack_replication_tasks_total',
    help: 'Task attempts finished, by kind and outcome (done, retry, failed)',
    labelNames: ['kind', 'outcome'],
    registers,
  });
  const reports = new Counter({
    name: 'haystack_replication_access_batches_total',
    help: 'ReportAccess batches received',
    registers,
  });
  const collected = new Counter({
    name: 'haystack_replication_gc_collected_total',
    help: 'Unreferenced needles deleted by garbage collection',
    registers,
  });
  const repairs = new Counter({
    name: 'haystack_replication_repairs_total',
    help: 'Corrupt replicas dropped and replaced',
    registers,
  });
  return {
    onTaskFinished: (t, outcome) => tasks.inc({ kind: TaskKind[t.kind].toLowerCase(), outcome }),
    onReport: () => reports.inc(),
    onCollected: () => collected.inc(),
    onRepair: () => repairs.inc(),
  };
}
