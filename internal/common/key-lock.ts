/**
 * Per-key mutual exclusion, first come first served: the store holds one per
 * blob id (one writer or deleter at a time), the replication manager one per
 * (blob, store) pair (one copy or tombstone at a time).
 */
export class KeyLock {
  private readonly tails = new Map<string, Promise<void>>();

  /** Waits for the key, returns the release function (idempotent). */
  async acquire(key: string): Promise<() => void> {
    const prev = this.tails.get(key);
    let release!: () => void;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    const tail = prev ? prev.then(() => mine) : mine;
    this.tails.set(key, tail);
    if (prev) await prev;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
  }

  get size(): number {
    return this.tails.size;
  }
}
