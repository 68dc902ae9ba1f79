import { ConnectError } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { StoreRecord } from '../../gen/haystack/v1/metadata_pb.js';
import { TaskKind, TaskPriority } from '../../gen/haystack/v1/replication_pb.js';
import { pastGrace, type RecentCopies, referencedLocally, VERIFY_BATCH } from './gc-rules.js';
import type { ManagerEnv } from './manager-env.js';
import type { Task } from './queue.js';
import { STORE_FAULTS, TaskError } from './store-calls.js';

/**
 * Orphan needle collection for the v1 layout (the rules are in gc-rules.ts): a
 * pass lists each HEALTHY store's needles (ListNeedles, pages of 1000), asks the
 * directory about the candidates (VerifyBlobs, batches of VERIFY_BATCH) and
 * enqueues a LOW COLLECT task per unreferenced one; the COLLECT task re-checks
 * alone on the pair, then deletes the needle (StoreService.Delete, 10 s).
 *
 * Placement mode keeps no per-blob records: VerifyBlobs cannot tell an orphan
 * from a blob there, so no pass runs in that mode.
 * Errors: a store whose listing or verification fails is skipped for this pass
 * (logged); the COLLECT task throws TaskError (retryable; a store fault for
 * UNAVAILABLE and the like) when the delete fails.
 */
export class OrphanGc {
  constructor(
    private readonly env: ManagerEnv,
    private readonly copies: RecentCopies,
  ) {}

  /** One pass over every HEALTHY store; returns COLLECT tasks enqueued. */
  async pass(): Promise<number> {
    const env = this.env;
    if (env.placementMode()) return 0;
    let enqueued = 0;
    for (const s of [...env.mirror.stores.values()]) {
      if (!env.acting() || s.health !== StoreHealth.HEALTHY) continue;
      try {
        enqueued += await this.passStore(s);
      } catch (err) {
        env.log.debug({ store: s.storeId, err: ConnectError.from(err).message }, 'gc of store failed');
      }
    }
    if (enqueued > 0) env.log.info({ enqueued }, 'garbage collection pass');
    env.pump();
    return enqueued;
  }

  private async passStore(s: StoreRecord): Promise<number> {
    const env = this.env;
    const client = env.store(s);
    const started = env.now();
    let token = '';
    let batch: string[] = [];
    let enqueued = 0;
    const flush = async () => {
      if (batch.length === 0) return;
      const ids = batch;
      batch = [];
      const res = await env.directory.verifyBlobs(s.storeId, ids);
      const referenced = new Set(res.referencedBlobIds);
      const now = env.now();
      for (const id of ids) {
        // Re-checked after the await: a collection must not replace a waiting copy or removal.
        if (referenced.has(id) || !env.active() || this.referenced(id, s.storeId)) continue;
        const r = env
          .queue()
          .enqueue(
            { blobId: id, storeId: s.storeId, kind: TaskKind.COLLECT, priority: TaskPriority.LOW },
            now,
          );
        if (r.added) enqueued++;
      }
    };
    do {
      const page = await client.listNeedles({ pageSize: 1000, pageToken: token }, { signal: env.signal() });
      for (const n of page.needles) {
        if (!pastGrace(Number(n.writtenAtMs), started, env.cfg.gcGracePeriodMs)) continue;
        if (this.referenced(n.blobId, s.storeId)) continue;
        batch.push(n.blobId);
        if (batch.length >= VERIFY_BATCH) await flush();
      }
      token = page.nextPageToken;
    } while (token && env.acting());
    await flush();
    return enqueued;
  }

  /**
   * The COLLECT task: deletes an unreferenced needle, re-checking the references
   * first, alone on the pair: no copy there can commit between the check and the delete.
   */
  async collect(t: Task): Promise<void> {
    const env = this.env;
    const collected = await env.exclusive(t.blobId, t.storeId, async () => {
      if (this.referenced(t.blobId, t.storeId)) return false;
      // A copy's commit whose answer was lost may still land: wait out the grace period.
      if (this.copies.recent(t.blobId, t.storeId, env.now())) return false;
      const s = env.mirror.stores.get(t.storeId);
      if (!s) return false;
      env.ensureActing();
      const res = await env.directory.verifyBlobs(t.storeId, [t.blobId]);
      if (res.referencedBlobIds.includes(t.blobId) || this.referenced(t.blobId, t.storeId)) return false;
      env.ensureActing();
      try {
        await env.store(s).delete({ blobId: t.blobId, term: env.term() }, { timeoutMs: 10_000 });
      } catch (err) {
        const ce = ConnectError.from(err);
        throw new TaskError(`delete on ${t.storeId}: ${ce.rawMessage}`, {
          storeFault: STORE_FAULTS.has(ce.code),
          retryable: true,
        });
      }
      return true;
    });
    if (!collected) return;
    env.events.onCollected?.(t.storeId, t.blobId);
    env.log.info({ blob: t.blobId, store: t.storeId }, 'orphan needle collected');
  }

  private referenced(blobId: string, storeId: string): boolean {
    const holders = this.env.mirror.blob(blobId)?.replicas.map((r) => r.storeId);
    return referencedLocally(holders, storeId, this.env.queue().find(blobId, storeId));
  }
}
