import { systemClock } from '../lease/lease-store.js';
import type { NodeContext } from './node-context.js';

/**
 * Every SNAPSHOT_INTERVAL: saves the applied state and compacts the log behind
 * it, keeping LOG_RETAIN_ENTRIES entries before the snapshot for followers
 * that lag a little (LogStore.saveSnapshot writes both atomically).
 */
export class Snapshots {
  private running = false;

  constructor(private readonly ctx: NodeContext) {}

  async loop(): Promise<void> {
    const { ctx } = this;
    while (!ctx.stopped.signal.aborted) {
      await systemClock.sleep(ctx.cfg.snapshotIntervalMs, ctx.stopped.signal);
      if (ctx.stopped.signal.aborted) return;
      await this.now().catch((err: unknown) => ctx.log.error({ err }, 'snapshot failed'));
    }
  }

  /** Saves the applied state and compacts the log behind it (no-op if nothing was applied since). */
  async now(): Promise<void> {
    const { ctx } = this;
    if (this.running) return;
    const snapIndex = ctx.store.snapshot?.index ?? 0n;
    if (ctx.state.appliedIndex <= snapIndex) return;
    this.running = true;
    try {
      const snap = ctx.state.toSnapshot();
      const t0 = performance.now();
      await ctx.store.saveSnapshot(snap, ctx.cfg.logRetainEntries);
      ctx.log.info(
        {
          index: snap.index,
          blobs: snap.blobs.length,
          firstIndex: ctx.store.firstIndex,
          ms: Math.round(performance.now() - t0),
        },
        'snapshot saved',
      );
    } finally {
      this.running = false;
    }
  }
}
