import { Code, ConnectError } from '@connectrpc/connect';
import { type BlobMeta, StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { BlobPlanner } from './blob-planner.js';
import { sendTombstone } from './blob-remove.js';
import type { CopyExclusions } from './copy-exclusions.js';
import type { RecentCopies } from './gc-rules.js';
import type { ManagerEnv } from './manager-env.js';
import { chooseSource, type StoreView } from './placement.js';
import type { Task } from './queue.js';
import { copyStillNeeded } from './replica-plan.js';
import { replicateError, TaskError } from './store-calls.js';

/**
 * The v1 layout's REPLICATE task: StoreService.Replicate pulls the blob onto the
 * target from the best live, not-corrupt source (chooseSource), checked against
 * the committed sha256 and fenced by the manager's term; then UpdateReplicas(add)
 * commits the replica. Runs alone on the (blob, target) pair.
 *
 * - A blob deleted before the commit: the copy is taken back (tombstone).
 * - Replicate's DATA_LOSS marks the source corrupt (`onSourceCorrupt`), its
 *   ALREADY_EXISTS excludes the target for the blob (see store-calls.ts).
 * - Whatever the outcome, the pair counts as just copied (gc-rules.ts RecentCopies).
 * Errors: TaskError (target not HEALTHY: not retryable; no live source, failed
 * commit: retryable; lease lost: not retryable).
 */
export class BlobCopy {
  constructor(
    private readonly env: ManagerEnv,
    private readonly planner: BlobPlanner,
    private readonly exclusions: CopyExclusions,
    private readonly copies: RecentCopies,
    private readonly onSourceCorrupt: (storeId: string, blobId: string) => void,
  ) {}

  /** Copies a blob onto t.storeId if it is still short of its target. */
  copy(t: Task): Promise<void> {
    return this.env.exclusive(t.blobId, t.storeId, async () => {
      // Checked under the pair's lock, so a removal or copy that just ended there counts.
      const b = this.env.mirror.blob(t.blobId);
      if (!b) return;
      if (b.replicas.some((r) => r.storeId === t.storeId)) return;
      const target = this.planner.targetOf(b, this.env.now());
      if (!copyStillNeeded(this.planner.liveHolders(b).length, target)) return;
      await this.copyLocked(b, t.storeId, new Set());
    });
  }

  /** Copies `b` onto targetId (never from a store in `exclude`) and commits it. */
  copyTo(b: BlobMeta, targetId: string, exclude: ReadonlySet<string>): Promise<void> {
    return this.env.exclusive(b.blobId, targetId, () => this.copyLocked(b, targetId, exclude));
  }

  private async copyLocked(b: BlobMeta, targetId: string, exclude: ReadonlySet<string>): Promise<void> {
    const target = this.env.mirror.stores.get(targetId);
    if (!target || target.health !== StoreHealth.HEALTHY) {
      throw new TaskError(`target store ${targetId} is not healthy`, { storeFault: false, retryable: false });
    }
    const source = chooseSource(
      b.replicas.map((r) => r.storeId),
      this.env.ctx(this.env.now()),
      new Set([...(this.planner.corruptOn(b.blobId) ?? []), ...exclude, targetId]),
    );
    if (!source) throw new TaskError('no live replica to copy from', { storeFault: false, retryable: true });
    this.env.ensureActing();
    try {
      await this.replicateAndCommit(b, target, source);
    } finally {
      // Whatever the outcome, the store may hold the copy now and its commit may land late.
      this.copies.note(b.blobId, targetId, this.env.now());
    }
  }

  private async replicateAndCommit(b: BlobMeta, target: StoreView, source: StoreView): Promise<void> {
    const env = this.env;
    const targetId = target.storeId;
    let volumeId: number;
    try {
      const res = await env.store(target).replicate(
        {
          blobId: b.blobId,
          cookie: b.cookie,
          source: { storeId: source.storeId, address: source.address, zone: source.zone },
          sha256: b.sha256,
          // The store fences manager terms apart from directory terms.
          term: env.term(),
        },
        { timeoutMs: env.cfg.copyTimeoutMs, signal: env.signal() },
      );
      volumeId = res.replica?.volumeId ?? 0;
    } catch (err) {
      throw replicateError(err, source.storeId, targetId, {
        // The source's bytes do not match the committed checksum: repair it too.
        corrupt: () => this.onSourceCorrupt(source.storeId, b.blobId),
        // The target holds other content under this id (another cookie) and keeps it.
        refused: () => this.exclusions.refuse(b.blobId, targetId),
      });
    }
    env.ensureActing();
    try {
      const res = await env.directory.updateReplicas({
        blobId: b.blobId,
        add: [{ storeId: targetId, volumeId }],
      });
      this.planner.settle(b.blobId, res.commitIndex);
    } catch (err) {
      const ce = ConnectError.from(err);
      if (ce.code === Code.NotFound) {
        // Deleted meanwhile: take the copy back.
        await sendTombstone(env, targetId, target.address, b.blobId);
        return;
      }
      throw new TaskError(`commit of the copy on ${targetId}: ${ce.rawMessage}`, {
        storeFault: false,
        retryable: true,
      });
    }
    env.log.info({ blob: b.blobId, from: source.storeId, to: targetId }, 'replica added');
  }
}
