import { TaskKind } from '../../gen/haystack/v1/replication_pb.js';

/**
 * Orphan collection rules for the v1 layout (orphan-gc.ts does the I/O). Pure
 * apart from the times the caller passes.
 *
 * - A needle is a candidate when it was written at least GC_GRACE_PERIOD ago (a
 *   write whose commit is in flight is never taken) and nothing local references
 *   it on that store: no replica in the mirrored metadata, no copy, removal or
 *   repair queued for the pair.
 * - Candidates go to the directory (VerifyBlobs) in batches; only those it does
 *   not reference become COLLECT tasks, re-checked locally after the await.
 * - When the COLLECT task runs, alone on the pair: references are checked again,
 *   and a pair where a copy ended within GC_GRACE_PERIOD is left alone (that
 *   copy's commit may still land even if its answer was lost).
 */
export const VERIFY_BATCH = 5_000;

/** (blob, store) as one map key. */
export const pairKey = (blobId: string, storeId: string) => `${blobId}\u0000${storeId}`;

/** True when something this manager knows of references the needle on the store. */
export function referencedLocally(
  holders: readonly string[] | undefined,
  storeId: string,
  queued: { kind: TaskKind } | undefined,
): boolean {
  if (holders?.includes(storeId)) return true;
  return queued !== undefined && queued.kind !== TaskKind.COLLECT;
}

/** True when a needle written at `writtenAtMs` (epoch ms) is old enough to collect at `now`. */
export function pastGrace(writtenAtMs: number, now: number, graceMs: number): boolean {
  return writtenAtMs <= now - graceMs;
}

/**
 * When the last copy onto each (blob, store) pair ended, for `graceMs`. Bounded:
 * past `max` entries the expired ones are dropped first.
 */
export class RecentCopies {
  private readonly at = new Map<string, number>();

  constructor(
    private readonly graceMs: number,
    private readonly max = 10_000,
  ) {}

  note(blobId: string, storeId: string, now: number): void {
    if (this.at.size >= this.max) {
      for (const [k, t] of this.at) if (now - t >= this.graceMs) this.at.delete(k);
    }
    this.at.set(pairKey(blobId, storeId), now);
  }

  recent(blobId: string, storeId: string, now: number): boolean {
    const t = this.at.get(pairKey(blobId, storeId));
    return t !== undefined && now - t < this.graceMs;
  }

  get size(): number {
    return this.at.size;
  }
}
