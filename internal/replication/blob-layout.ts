import { TaskKind } from '../../gen/haystack/v1/replication_pb.js';
import { BlobCopy } from './blob-copy.js';
import { BlobPlanner } from './blob-planner.js';
import { BlobRemoval } from './blob-remove.js';
import { BlobRepair } from './blob-repair.js';
import { CopyExclusions } from './copy-exclusions.js';
import { RecentCopies } from './gc-rules.js';
import type { ManagerEnv } from './manager-env.js';
import { OrphanGc } from './orphan-gc.js';
import type { Task } from './queue.js';
import { TaskError } from './store-calls.js';

/**
 * The v1 layout (one directory record per blob, replicas listed in it), as the
 * manager drives it; the counterpart of hot-replicas.ts for placement mode. The
 * planner decides (blob-planner.ts), one file per task kind acts: REPLICATE
 * (blob-copy.ts), REMOVE (blob-remove.ts), REPAIR (blob-repair.ts), COLLECT and
 * the orphan pass (orphan-gc.ts). Stores a copy must skip (copy-exclusions.ts)
 * and the pairs copied lately (gc-rules.ts) are shared among them here.
 */
export class BlobLayout {
  readonly planner: BlobPlanner;
  readonly orphans: OrphanGc;
  private readonly exclusions = new CopyExclusions();
  private readonly copier: BlobCopy;
  private readonly removal: BlobRemoval;
  private readonly repairs: BlobRepair;

  /** `onSourceCorrupt`: a copy found its source's bytes corrupt (DATA_LOSS). */
  constructor(env: ManagerEnv, onSourceCorrupt: (storeId: string, blobId: string) => void) {
    const recent = new RecentCopies(env.cfg.gcGracePeriodMs);
    this.planner = new BlobPlanner(env, this.exclusions);
    this.copier = new BlobCopy(env, this.planner, this.exclusions, recent, onSourceCorrupt);
    this.removal = new BlobRemoval(env, this.planner);
    this.repairs = new BlobRepair(env, this.planner, this.removal, this.copier, this.exclusions);
    this.orphans = new OrphanGc(env, recent);
  }

  /** Runs one task by its kind. Errors: TaskError (see each verb). */
  async execute(t: Task): Promise<void> {
    if (t.kind === TaskKind.REPLICATE) return this.copier.copy(t);
    if (t.kind === TaskKind.REMOVE) return this.removal.remove(t);
    if (t.kind === TaskKind.REPAIR) return this.repairs.repair(t);
    if (t.kind === TaskKind.COLLECT) return this.orphans.collect(t);
    throw new TaskError(`unknown task kind ${t.kind}`, { storeFault: false, retryable: false });
  }

  /** Keeps copies of the blob off the store until `until` (a copy there failed for good). */
  avoidFor(blobId: string, storeId: string, until: number): void {
    this.exclusions.avoidFor(blobId, storeId, until);
  }

  /** The blob was deleted: forget all about it. */
  forget(blobId: string): void {
    this.planner.forget(blobId);
    this.exclusions.forget(blobId);
  }
}
