import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import { StorageTier } from '../../gen/haystack/v1/blob_pb.js';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import {
  GetBlobStatusResponseSchema,
  ListTasksResponseSchema,
  type ReplicationService,
  ReplicationServiceGetStatsResponseSchema,
  type ReplicationTask,
  ReplicationTaskSchema,
  type ReportAccessRequest,
  TaskState,
} from '../../gen/haystack/v1/replication_pb.js';
import { validateBlobId } from '../common/blob-id.js';
import { mapErrors, toConnectError } from '../rpc/errors.js';
import type { ReplicationConfig } from './config.js';
import { StandbyError } from './errors.js';
import type { ReplicationManager } from './manager.js';
import { blobsBelowTarget } from './metrics.js';
import { PRIORITIES, type Task } from './queue.js';

const MAX_COUNTS_PER_BATCH = 200_000;

function standby(): ConnectError {
  return toConnectError(new StandbyError());
}

export function toProtoTask(t: Task): ReplicationTask {
  return create(ReplicationTaskSchema, {
    taskId: t.id,
    blobId: t.blobId,
    storeId: t.storeId,
    kind: t.kind,
    priority: t.priority,
    state: t.state,
    attempts: t.attempts,
    lastError: t.lastError,
    createdAtMs: BigInt(Math.round(t.createdAt)),
  });
}

/** haystack.v1.ReplicationService over a manager. */
export function replicationService(
  m: ReplicationManager,
  cfg: ReplicationConfig,
): ServiceImpl<typeof ReplicationService> {
  return {
    async reportAccess(requests, ctx) {
      if (!m.active) throw standby();
      const ctl = m.lead.openStream();
      const it = requests[Symbol.asyncIterator]();
      const aborted = new Promise<'aborted'>((resolve) => {
        const done = () => resolve('aborted');
        ctl.signal.addEventListener('abort', done, { once: true });
        ctx.signal.addEventListener('abort', done, { once: true });
      });
      let batches = 0n;
      try {
        for (;;) {
          const next: IteratorResult<ReportAccessRequest> | 'aborted' = await Promise.race([
            it.next(),
            aborted,
          ]);
          if (next === 'aborted') {
            throw new ConnectError('replication manager is no longer active', Code.Unavailable);
          }
          if (next.done) break;
          const req = next.value;
          if (!m.active) throw standby();
          if (!req.reporterId) throw new ConnectError('reporter_id is required', Code.InvalidArgument);
          if (req.counts.length > MAX_COUNTS_PER_BATCH) {
            throw new ConnectError(`at most ${MAX_COUNTS_PER_BATCH} counts per batch`, Code.InvalidArgument);
          }
          const interval = Math.min(
            3_600_000,
            req.intervalMs > 0 ? req.intervalMs : cfg.statsReportIntervalMs,
          );
          m.report(
            req.reporterId,
            interval,
            req.counts
              .filter((c) => validateBlobId(c.blobId) === null)
              .map((c) => [c.blobId, Number(c.count)] as const),
          );
          batches++;
        }
      } finally {
        m.lead.closeStream(ctl);
        void it.return?.();
      }
      return { batches };
    },

    reportCorruption(req) {
      if (!req.storeId) throw new ConnectError('store_id is required', Code.InvalidArgument);
      if (!m.active) throw standby();
      return mapErrors(async () => ({ tasksEnqueued: m.reportCorruption(req.storeId, req.blobIds) }));
    },

    async getBlobStatus(req) {
      const why = validateBlobId(req.blobId);
      if (why) throw new ConnectError(why, Code.InvalidArgument);
      const now = Date.now();
      const heat = {
        ratePerMinute: m.heat.rate(req.blobId, now),
        heat: m.heat
          .heat(req.blobId, now)
          .map((h) => ({ reporterId: h.reporterId, ratePerMinute: h.ratePerMinute })),
        tasks: m.queue.forBlob(req.blobId).map(toProtoTask),
      };
      if (m.placementMode) {
        // No per-blob record: the group's members and the extras, with facts from Stat on each.
        const st = await m.hot.replicas(req.blobId);
        if (!st.found) throw new ConnectError(`blob ${req.blobId} not found on its stores`, Code.NotFound);
        if (st.cold) {
          // Cold: the members hold stubs; the bytes are shard i on the group's ec_members[i].
          const ec = m.mirror.placement.groupFor(req.blobId)?.ecMembers ?? [];
          return create(GetBlobStatusResponseSchema, {
            blobId: req.blobId,
            tier: StorageTier.ERASURE_CODED,
            cold: st.cold,
            shards: ec.map((e) => {
              const s = m.mirror.stores.get(e.storeId);
              return {
                storeId: e.storeId,
                address: s?.address ?? '',
                zone: s?.zone ?? '',
                health: s?.health ?? StoreHealth.UNSPECIFIED,
              };
            }),
            targetReplicaCount: 0,
            ...heat,
          });
        }
        return create(GetBlobStatusResponseSchema, {
          blobId: req.blobId,
          tier: StorageTier.REPLICATED,
          replicas: st.replicas.map(({ role: _role, ...r }) => r),
          targetReplicaCount: m.hot.targetOf(req.blobId, now),
          ...heat,
        });
      }
      const b = m.mirror.blob(req.blobId);
      if (!b) throw new ConnectError(`blob ${req.blobId} not found`, Code.NotFound);
      return create(GetBlobStatusResponseSchema, {
        blobId: b.blobId,
        replicas: b.replicas.map((r) => {
          const s = m.mirror.stores.get(r.storeId);
          return {
            storeId: r.storeId,
            volumeId: r.volumeId,
            address: s?.address ?? '',
            zone: s?.zone ?? '',
            health: s?.health ?? StoreHealth.UNSPECIFIED,
          };
        }),
        targetReplicaCount: m.blobs.planner.targetOf(b, now),
        ...heat,
      });
    },

    getStats() {
      const now = Date.now();
      const depth = m.queue.depth();
      return create(ReplicationServiceGetStatsResponseSchema, {
        managerId: cfg.managerId,
        active: m.active,
        term: m.lead.term,
        queue: PRIORITIES.map((p) => ({ priority: p, depth: BigInt(depth.get(p) ?? 0) })),
        inFlight: BigInt(m.queue.inFlight),
        completed: BigInt(m.queue.completed),
        failed: BigInt(m.queue.failed),
        hotBlobs: m
          .hotBlobs(now)
          .slice(0, 20)
          .map((h) => {
            if (m.placementMode) {
              const g = m.mirror.placement.groupFor(h.blobId);
              return {
                blobId: h.blobId,
                ratePerMinute: h.ratePerMinute,
                targetReplicaCount: m.hot.targetOf(h.blobId, now),
                replicaCount: (g?.members.length ?? 0) + m.hot.extrasOf(h.blobId).length,
              };
            }
            const b = m.mirror.blob(h.blobId);
            return {
              blobId: h.blobId,
              ratePerMinute: h.ratePerMinute,
              targetReplicaCount: b ? m.blobs.planner.targetOf(b, now) : 0,
              replicaCount: b ? m.blobs.planner.liveHolders(b).length : 0,
            };
          }),
        breakers: m.queue.breakerStates(now),
        trackedBlobs: BigInt(m.heat.size),
        appliedIndex: m.mirror.appliedIndex,
        blobsBelowTarget: BigInt(blobsBelowTarget(m)),
      });
    },

    listTasks(req) {
      const size = req.pageSize === 0 ? 100 : Math.min(1000, req.pageSize);
      const state = req.state === TaskState.UNSPECIFIED ? undefined : req.state;
      return create(ListTasksResponseSchema, { tasks: m.queue.list(state, size).map(toProtoTask) });
    },

    runAudit() {
      return mapErrors(() => m.audit());
    },
  };
}
