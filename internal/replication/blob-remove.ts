import { Code, ConnectError } from '@connectrpc/connect';
import type { BlobMeta } from '../../gen/haystack/v1/common_pb.js';
import { sleep } from '../common/sleep.js';
import type { BlobPlanner } from './blob-planner.js';
import type { ManagerEnv } from './manager-env.js';
import type { Task } from './queue.js';
import { removalStillNeeded } from './replica-plan.js';
import { TaskError } from './store-calls.js';

/**
 * Best-effort tombstone of a blob on a store: up to 3 tries, 200 ms × 2^i apart,
 * each bounded to 5 s; stops once the lease is lost. Never throws: an orphan left
 * behind is collected by GC later (orphan-gc.ts). Callers hold the pair's lock.
 */
export async function sendTombstone(
  env: Pick<ManagerEnv, 'acting' | 'store' | 'log' | 'term'>,
  storeId: string,
  address: string,
  blobId: string,
): Promise<void> {
  for (let i = 0; i < 3 && env.acting(); i++) {
    try {
      await env.store({ storeId, address }).delete({ blobId, term: env.term() }, { timeoutMs: 5_000 });
      return;
    } catch (err) {
      env.log.debug(
        { blob: blobId, store: storeId, err: ConnectError.from(err).message },
        'tombstone failed',
      );
      await sleep(200 * 2 ** i);
    }
  }
}

/**
 * The v1 layout's REMOVE task and the drop both it and repair use: the replica
 * leaves the directory's record first (UpdateReplicas remove, with the version
 * planned on, so a stale plan is refused), so readers stop going there, and only
 * then is the store's copy tombstoned, alone on the (blob, store) pair.
 * Errors: TaskError (retryable) when the commit fails for another reason than the
 * blob being gone; non-retryable once the lease is lost.
 */
export class BlobRemoval {
  constructor(
    private readonly env: ManagerEnv,
    private readonly planner: BlobPlanner,
  ) {}

  /** Removes the replica on t.storeId if the blob is still over its target. */
  async remove(t: Task): Promise<void> {
    const b = this.env.mirror.blob(t.blobId);
    if (!b) return;
    if (!b.replicas.some((r) => r.storeId === t.storeId)) return;
    const live = this.planner.liveHolders(b);
    const target = this.planner.targetOf(b, this.env.now());
    if (!removalStillNeeded(live, t.storeId, target, this.env.cfg)) return;
    if (!(await this.drop(b, t.storeId, 'removal'))) return;
    this.env.log.info({ blob: b.blobId, store: t.storeId }, 'replica removed');
  }

  /**
   * Drops a blob's replica on a store: metadata, then tombstone, both alone on the
   * pair. False when the blob is gone from the directory.
   */
  drop(b: BlobMeta, storeId: string, what: string): Promise<boolean> {
    const env = this.env;
    return env.exclusive(b.blobId, storeId, async () => {
      env.ensureActing();
      try {
        const res = await env.directory.updateReplicas({
          blobId: b.blobId,
          removeStoreIds: [storeId],
          expectedVersion: b.version,
        });
        this.planner.settle(b.blobId, res.commitIndex);
      } catch (err) {
        const ce = ConnectError.from(err);
        if (ce.code === Code.NotFound) return false;
        throw new TaskError(`commit of the ${what}: ${ce.rawMessage}`, {
          storeFault: false,
          retryable: true,
        });
      }
      // Deposed meanwhile: the needle is an orphan for the next manager's GC (which
      // takes the pair's lock there) rather than a tombstone racing its copies.
      env.ensureActing();
      const s = env.mirror.stores.get(storeId);
      if (s) await sendTombstone(env, storeId, s.address, b.blobId);
      return true;
    });
  }
}
