/**
 * A watchdog for one long-lived stream whose peer promises to write at least
 * every so often (a keepalive): `signal` aborts when nothing was heard for
 * `stallMs`, or when `parent` aborts. Pass `signal` to the call, call `heard()` on
 * every message and `stop()` when the stream is over.
 *
 * Why: an HTTP/2 stream can stay open and deliver nothing (seen after a PING
 * timeout under load, the next stream on the reconnected session never got a
 * byte), and an `await` on it then waits forever; only the application knows how
 * often its peer speaks.
 */
export class StallWatch {
  private readonly ctl = new AbortController();
  private last = performance.now();
  private readonly timer: NodeJS.Timeout;
  private readonly onParentAbort = () => this.ctl.abort(this.parent.reason);
  private held = false;
  /** True once the watchdog (not the parent) aborted the stream. */
  stalled = false;

  /**
   * `stallMs`: the silence that counts as stuck, in ms; a function when it may change
   * while the stream is open (read on every check).
   */
  constructor(
    private readonly stallMs: number | (() => number),
    private readonly parent: AbortSignal,
  ) {
    if (parent.aborted) this.ctl.abort(parent.reason);
    else parent.addEventListener('abort', this.onParentAbort, { once: true });
    // Checked four times per (initial) stall period: noticed within about 1.25 × stallMs.
    this.timer = setInterval(() => this.check(), Math.max(10, Math.floor(this.limit() / 4)));
    this.timer.unref();
  }

  private limit(): number {
    return typeof this.stallMs === 'number' ? this.stallMs : this.stallMs();
  }

  /** Aborts when this watchdog or the parent does. */
  get signal(): AbortSignal {
    return this.ctl.signal;
  }

  /** A message arrived: the stream is alive (and any hold is over). */
  heard(): void {
    this.last = performance.now();
    this.held = false;
  }

  /**
   * The caller is busy with a message and reads no more until it calls `heard()`:
   * that time is not the stream's silence.
   */
  hold(): void {
    this.held = true;
  }

  /** The stream is over: no more checks. */
  stop(): void {
    clearInterval(this.timer);
    this.parent.removeEventListener('abort', this.onParentAbort);
  }

  private check(): void {
    if (this.ctl.signal.aborted) {
      this.stop();
      return;
    }
    if (this.held) return;
    const limit = this.limit();
    if (performance.now() - this.last < limit) return;
    this.stalled = true;
    this.stop();
    this.ctl.abort(new Error(`no message for ${limit} ms: the stream is stuck`));
  }
}
