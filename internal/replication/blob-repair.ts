import type { BlobMeta } from '../../gen/haystack/v1/common_pb.js';
import type { BlobCopy } from './blob-copy.js';
import type { BlobPlanner } from './blob-planner.js';
import type { BlobRemoval } from './blob-remove.js';
import type { CopyExclusions } from './copy-exclusions.js';
import type { ManagerEnv } from './manager-env.js';
import { chooseTargets } from './placement.js';
import type { Task } from './queue.js';
import { liveHolders } from './replica-plan.js';
import { TaskError } from './store-calls.js';

/**
 * The v1 layout's REPAIR task: a replica reported corrupt (scrub, a read, or a
 * copy's DATA_LOSS) is dropped (metadata, then tombstone: blob-remove.ts), then a
 * good replica is copied onto the best other store (blob-copy.ts), or back onto
 * the same store when nothing else fits. A failed copy is logged, not thrown: the
 * planner sees the blob below target and copies it anyway.
 * Errors: TaskError (retryable) when no good replica is left to copy from, and
 * those of the drop.
 */
export class BlobRepair {
  constructor(
    private readonly env: ManagerEnv,
    private readonly planner: BlobPlanner,
    private readonly removal: BlobRemoval,
    private readonly copier: BlobCopy,
    private readonly exclusions: CopyExclusions,
  ) {}

  async repair(t: Task): Promise<void> {
    const env = this.env;
    const b = env.mirror.blob(t.blobId);
    if (!b) return;
    const bad = this.planner.corruptOn(t.blobId) ?? new Set([t.storeId]);
    const holders = b.replicas.map((r) => r.storeId);
    if (liveHolders(holders, env.mirror.stores, bad).length === 0) {
      throw new TaskError('no good replica to repair from', { storeFault: false, retryable: true });
    }
    if (holders.includes(t.storeId)) {
      if (!(await this.removal.drop(b, t.storeId, "corrupt replica's removal"))) return;
      env.events.onRepair?.(t.storeId, b.blobId);
      env.log.warn({ blob: b.blobId, store: t.storeId }, 'corrupt replica dropped');
    }
    // Copy onto the best other store (the corrupt one only if nothing else fits).
    const remaining = holders.filter((s) => s !== t.storeId);
    const now = env.now();
    const [dest] = chooseTargets(
      remaining,
      b.size,
      1,
      env.ctx(now),
      new Set([t.storeId, ...this.exclusions.excluded(b.blobId, now)]),
    );
    const destId = dest?.storeId ?? t.storeId;
    const view: BlobMeta = { ...b, replicas: b.replicas.filter((r) => r.storeId !== t.storeId) };
    try {
      await this.copier.copyTo(view, destId, new Set([t.storeId]));
    } catch (err) {
      env.log.warn(
        { blob: b.blobId, err: err instanceof Error ? err.message : String(err) },
        'repair copy failed',
      );
    }
    this.planner.repaired(t.blobId, t.storeId);
  }
}
