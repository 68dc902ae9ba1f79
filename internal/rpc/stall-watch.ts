/**
 * A watchdog for one long-lived stream whose peer promises to write at least
 * every so often (a keepalive): `signal` aborts when nothing was heard for
 * `stallMs` (`firstMs` before the first message, which may be a snapshot the peer
 * needs seconds to build), or when `parent` aborts. Pass `signal` to the call,
 * call `heard()` on every message and `stop()` when the stream is over.
 *
 * Only time this process could have heard something counts: silence accrues per
 * check at most twice the check period, so a blocked event loop (GC, a snapshot
 * being encoded, a starved core) is not taken for the peer's silence, and a stall
 * is confirmed once more after the I/O phase (setImmediate) before aborting.
 *
 * Why: an HTTP/2 stream can stay open and deliver nothing (seen after a PING
 * timeout under load, the next stream on the reconnected session never got a
 * byte), and an `await` on it then waits forever; only the application knows how
 * often its peer speaks.
 */
export class StallWatch {
  private readonly ctl = new AbortController();
  private silentMs = 0;
  private lastCheck = performance.now();
  private timer: NodeJS.Timeout | undefined;
  private readonly onParentAbort = () => this.ctl.abort(this.parent.reason);
  private held = false;
  private heardAny = false;
  private stopped = false;
  /** True once the watchdog (not the parent) aborted the stream. */
  stalled = false;

  /**
   * `stallMs`: the silence that counts as stuck, in ms; a function when it may change
   * while the stream is open (read on every check). `firstMs`: the same before the
   * first message (default `stallMs`).
   */
  constructor(
    private readonly stallMs: number | (() => number),
    private readonly parent: AbortSignal,
    private readonly firstMs?: number,
  ) {
    if (parent.aborted) this.ctl.abort(parent.reason);
    else parent.addEventListener('abort', this.onParentAbort, { once: true });
    this.arm();
  }

  private limit(): number {
    const every = typeof this.stallMs === 'number' ? this.stallMs : this.stallMs();
    return this.heardAny ? every : Math.max(every, this.firstMs ?? every);
  }

  private period(): number {
    // Four checks per (current) stall period: noticed within about 1.25 × the limit.
    return Math.max(10, Math.floor(this.limit() / 4));
  }

  private arm(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => this.check(), this.period());
    this.timer.unref();
  }

  /** Aborts when this watchdog or the parent does. */
  get signal(): AbortSignal {
    return this.ctl.signal;
  }

  /** A message arrived: the stream is alive (and any hold is over). */
  heard(): void {
    this.silentMs = 0;
    this.heardAny = true;
    this.held = false;
  }

  /**
   * This side is busy (with a message, or before it sends its next request) and
   * expects nothing until `heard()` or `release()`: that time is not silence.
   */
  hold(): void {
    this.held = true;
  }

  /** Ends a hold without counting it as a message (the silence so far stands). */
  release(): void {
    this.held = false;
  }

  /** The stream is over: no more checks. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.parent.removeEventListener('abort', this.onParentAbort);
  }

  private check(): void {
    if (this.ctl.signal.aborted) {
      this.stop();
      return;
    }
    const now = performance.now();
    const elapsed = Math.min(now - this.lastCheck, 2 * this.period());
    this.lastCheck = now;
    if (!this.held) this.silentMs += elapsed;
    const limit = this.limit();
    if (this.silentMs < limit) {
      this.arm();
      return;
    }
    // Messages read in this loop turn's I/O phase count before the verdict.
    setImmediate(() => {
      if (this.stopped || this.ctl.signal.aborted) return;
      if (this.held || this.silentMs < limit) {
        this.arm();
        return;
      }
      this.stalled = true;
      this.stop();
      this.ctl.abort(new Error(`no message for ${Math.round(this.silentMs)} ms: the stream is stuck`));
    });
  }
}
