/**
 * Group commit: items whose bytes are fully written are submitted; one flush
 * (fdatasync of the volume, then the index append + fdatasync) covers every item
 * submitted before the flush started. While a flush runs, new items queue and
 * the next flush takes them all at once, so under load one fsync pair serves
 * many writers.
 */
export class GroupCommitter<T> {
  private pending: { item: T; resolve: () => void; reject: (e: unknown) => void }[] = [];
  private running = false;
  /** Flushes performed and items covered (for tests/metrics). */
  flushes = 0;
  items = 0;

  /**
   * `onFlush` (optional, for metrics) is told each flush's duration in seconds,
   * how many items it covered and whether it succeeded.
   */
  constructor(
    private readonly flush: (items: T[]) => Promise<void>,
    private readonly onFlush?: (seconds: number, items: number, ok: boolean) => void,
  ) {}

  /** Resolves once a flush that started after this call completed successfully. */
  submit(item: T): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      if (!this.running) void this.run();
    });
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      while (this.pending.length > 0) {
        const batch = this.pending;
        this.pending = [];
        this.flushes++;
        this.items += batch.length;
        const started = performance.now();
        try {
          await this.flush(batch.map((b) => b.item));
          this.onFlush?.((performance.now() - started) / 1000, batch.length, true);
          for (const b of batch) b.resolve();
        } catch (err) {
          this.onFlush?.((performance.now() - started) / 1000, batch.length, false);
          for (const b of batch) b.reject(err);
        }
      }
    } finally {
      this.running = false;
    }
  }
}
