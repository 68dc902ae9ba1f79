import { TaskPriority } from '../../gen/haystack/v1/replication_pb.js';
import type { ReplicationConfig } from './config.js';
import { isLive, type StoreView } from './placement.js';

/**
 * Per-blob replica planning for the v1 layout (one directory record per blob):
 * what to do about one blob given how many live replicas it has, its target, and
 * the tasks already queued for it. Pure; blob-planner.ts feeds it and enqueues.
 *
 * - Live replicas are on stores neither DOWN nor unknown, minus those known corrupt.
 * - No live replica: nothing to copy from; the blob is unavailable, wait.
 * - Under target counting the queued copies (REPLICATE and REPAIR): copy the
 *   shortfall; the waiting removals are moot and go.
 * - Over target with nothing queued for the blob: drop one replica. Removals run
 *   one at a time per blob (the next is planned once this one is done).
 * - A copy's priority: URGENT below the minimum, HIGH for a raised (hot) target,
 *   MEDIUM below the default, LOW otherwise.
 * - When a task runs, the world may have moved: a copy is still wanted while the
 *   live replicas are short of the target; a removal while the others still keep
 *   max(target, minimum).
 */
export type PlanConfig = Pick<ReplicationConfig, 'minReplicaCount' | 'defaultReplicaCount'>;

export interface ReplicaCounts {
  /** Live, not-known-corrupt replicas. */
  live: number;
  /** The target the policy wants now. */
  target: number;
  /** REPLICATE and REPAIR tasks queued or running for the blob. */
  copies: number;
  /** REMOVE tasks queued or running for the blob. */
  removals: number;
}

export type ReplicaPlan =
  | { action: 'none' }
  | { action: 'copy'; need: number; priority: TaskPriority; cancelRemovals: true }
  | { action: 'drop' };

/** How a blob stands against its target (the audit's counters). */
export interface ReplicaStatus {
  under: boolean;
  over: boolean;
  unavailable: boolean;
}

/** Store ids of `holders` holding a live replica (not DOWN or unknown, not in `bad`). */
export function liveHolders(
  holders: readonly string[],
  stores: ReadonlyMap<string, StoreView>,
  bad?: ReadonlySet<string>,
): string[] {
  return holders.filter((s) => isLive(stores.get(s)) && !bad?.has(s));
}

export function replicaStatus(live: number, target: number): ReplicaStatus {
  return { under: live < target, over: live > target, unavailable: live === 0 };
}

export function copyPriority(live: number, target: number, cfg: PlanConfig): TaskPriority {
  if (live < cfg.minReplicaCount) return TaskPriority.URGENT;
  if (target > cfg.defaultReplicaCount) return TaskPriority.HIGH;
  if (live < cfg.defaultReplicaCount) return TaskPriority.MEDIUM;
  return TaskPriority.LOW;
}

/** What to enqueue for one blob now. */
export function planReplicas(c: ReplicaCounts, cfg: PlanConfig): ReplicaPlan {
  if (c.live === 0) return { action: 'none' };
  if (c.live + c.copies < c.target) {
    const need = c.target - c.live - c.copies;
    return { action: 'copy', need, priority: copyPriority(c.live, c.target, cfg), cancelRemovals: true };
  }
  if (c.live > c.target && c.copies === 0 && c.removals === 0) return { action: 'drop' };
  return { action: 'none' };
}

/** A queued copy is still wanted when it runs. */
export function copyStillNeeded(live: number, target: number): boolean {
  return live < target;
}

/** A queued removal of the replica on `storeId` is still right when it runs. */
export function removalStillNeeded(
  live: readonly string[],
  storeId: string,
  target: number,
  cfg: Pick<ReplicationConfig, 'minReplicaCount'>,
): boolean {
  const others = live.length - (live.includes(storeId) ? 1 : 0);
  return others >= Math.max(target, cfg.minReplicaCount);
}
