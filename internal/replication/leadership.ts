import { setMaxListeners } from 'node:events';
import type { LeaseKeeper } from '../lease/lease-keeper.js';

/**
 * Whether this manager instance acts. The lease keeper (lease-keeper.ts: a Redis
 * lease with a fencing term) says when it is acquired and lost; without one (a
 * single instance without Redis) the instance is active from start(), at term 0.
 *
 * - Active: `activate(term, signal)` is called once; `signal` aborts when it ends.
 * - Lost (or stop()): the signal aborts, every open ReportAccess stream is told
 *   to end, then `deactivate(reason)` is called.
 * - acting() is the check before each side effect: active and the lease still
 *   locally valid (it may lapse before the keeper notices).
 */
/** What Leadership uses of a LeaseKeeper. */
export type Lease = Pick<LeaseKeeper, 'on' | 'start' | 'stop' | 'isValid'>;

export class Leadership {
  active = false;
  term = 0n;
  private ctl = new AbortController();
  private readonly streams = new Set<AbortController>();

  constructor(
    private readonly lease: Lease | undefined,
    private readonly on: {
      activate(term: bigint, signal: AbortSignal): void;
      deactivate(reason: string): void;
    },
  ) {}

  start(): void {
    const lease = this.lease;
    if (!lease) {
      this.activate(0n);
      return;
    }
    lease.on((e) => {
      if (e.type === 'acquired') this.activate(e.term);
      else if (e.type === 'lost') this.deactivate(e.reason);
    });
    lease.start();
  }

  async stop(): Promise<void> {
    this.deactivate('shutting down');
    await this.lease?.stop();
  }

  /** True while this instance may act (lease held and locally valid). */
  acting(): boolean {
    return this.active && (this.lease ? this.lease.isValid() : true);
  }

  /** Aborted when this instance stops being active. */
  signal(): AbortSignal {
    return this.ctl.signal;
  }

  /** Registers an open ReportAccess stream; the signal fires when it must end. */
  openStream(): AbortController {
    const c = new AbortController();
    this.streams.add(c);
    return c;
  }

  closeStream(c: AbortController): void {
    this.streams.delete(c);
  }

  private activate(term: bigint): void {
    if (this.active) return;
    this.active = true;
    this.term = term;
    this.ctl = new AbortController();
    // Every running call's deadline listens to it (rpc/deadline.ts): hundreds at once are normal, not a leak.
    setMaxListeners(0, this.ctl.signal);
    this.on.activate(term, this.ctl.signal);
  }

  private deactivate(reason: string): void {
    if (!this.active) return;
    this.active = false;
    this.ctl.abort();
    for (const s of this.streams) s.abort();
    this.on.deactivate(reason);
  }
}
