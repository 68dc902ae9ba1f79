/** Entries each map keeps at most; beyond, it starts over (a manager relearns from the same failures). */
const MAX_ENTRIES = 100_000;

/**
 * Stores that copies of a blob must skip for now:
 *
 * - refused: the store answered ALREADY_EXISTS (it holds other content under the
 *   id and keeps it). A tombstone is no refusal: a copy supersedes it.
 * - avoided until a time: a copy there just failed for good, or the store's copy
 *   was corrupt; placement tries elsewhere first.
 *
 * Bounded; pure apart from the time the caller passes.
 */
export class CopyExclusions {
  private readonly refused = new Map<string, Set<string>>();
  private refusedCount = 0;
  private readonly avoid = new Map<string, Map<string, number>>();

  /** Stores to skip for a blob now. */
  excluded(blobId: string, now: number): Set<string> {
    const out = new Set(this.refused.get(blobId));
    const av = this.avoid.get(blobId);
    if (av) {
      for (const [s, until] of av) {
        if (until > now) out.add(s);
        else av.delete(s);
      }
      if (av.size === 0) this.avoid.delete(blobId);
    }
    return out;
  }

  avoidFor(blobId: string, storeId: string, until: number): void {
    if (this.avoid.size >= MAX_ENTRIES) this.avoid.clear();
    let m = this.avoid.get(blobId);
    if (!m) {
      m = new Map();
      this.avoid.set(blobId, m);
    }
    m.set(storeId, until);
  }

  refuse(blobId: string, storeId: string): void {
    if (this.refusedCount >= MAX_ENTRIES) {
      this.refused.clear();
      this.refusedCount = 0;
    }
    let set = this.refused.get(blobId);
    if (!set) {
      set = new Set();
      this.refused.set(blobId, set);
    }
    if (!set.has(storeId)) {
      set.add(storeId);
      this.refusedCount++;
    }
  }

  /** Forgets a blob (deleted). */
  forget(blobId: string): void {
    this.refused.delete(blobId);
    this.avoid.delete(blobId);
  }
}
