import type { Clock, LeaseInfo, LeaseStore } from './lease-store.js';

export interface LeaseKeeperOptions {
  store: LeaseStore;
  clock: Clock;
  key: string;
  /** This process's holder string. */
  holder: string;
  /** Lease time-to-live (LEADER_TIMEOUT). */
  ttlMs: number;
  /** How often the holder renews (LEADER_HEARTBEAT_INTERVAL). */
  renewIntervalMs: number;
  /** How often a non-holder tries to take the lease. */
  retryIntervalMs: number;
  /**
   * The holder considers its lease gone this long before the TTL would run out,
   * counted from when the winning SET or the renewal was *sent*: it covers clock
   * rate differences between this host and the lease store and scheduling delays.
   */
  safetyMarginMs: number;
  /** When false the keeper never tries to take the lease (it only watches the holder). */
  mayAcquire?: () => boolean;
  /** Diagnostics: every failed store call. */
  onError?: (op: string, err: unknown) => void;
  /** Diagnostics: the first successful store call after failed ones; `downMs` since the first of them failed. */
  onRecovered?: (downMs: number) => void;
}

export type LeaseEvent =
  | { type: 'acquired'; term: bigint }
  | { type: 'lost'; term: bigint; reason: string }
  | { type: 'holder'; current: LeaseInfo | null };

/**
 * Keeps (or tries to take) one lease. Pure logic over a LeaseStore and a Clock:
 * the holder renews every renewIntervalMs (from each send; a renewal slower than
 * that is followed by the next at once, so the lease holds while answers take
 * under half its validity); its lease counts as valid only until
 * `sent + ttl - margin` of the last successful SET/renewal, by the local monotonic
 * clock, so when the store becomes unreachable the holder stops acting on the
 * lease before anybody else can win it. `isValid()` is what callers check before
 * every action that needs the lease.
 */
export class LeaseKeeper {
  private held: { term: bigint; validUntil: number } | null = null;
  private running = false;
  private wake: AbortController = new AbortController();
  private readonly stopCtl = new AbortController();
  private readonly listeners = new Set<(e: LeaseEvent) => void>();
  /** Highest term seen: ours, the current holder's, or one reported by others. */
  knownTerm = 0n;
  /** The holder as last read (null: nobody, or not known). */
  holderInfo: LeaseInfo | null = null;
  /** Last error talking to the store, cleared by the next success. */
  lastError: string | null = null;
  /** Monotonic time of the last successful store call. */
  lastStoreContact = Number.NEGATIVE_INFINITY;
  /** Monotonic time of the first failed call since the last success (null: none failed). */
  private failingSince: number | null = null;

  constructor(private readonly opts: LeaseKeeperOptions) {}

  on(listener: (e: LeaseEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(e: LeaseEvent): void {
    for (const l of [...this.listeners]) l(e);
  }

  /** True while this process holds the lease and its local validity has not run out. */
  isValid(): boolean {
    return this.held !== null && this.opts.clock.now() < this.held.validUntil;
  }

  /** The term of the lease held (valid or not yet noticed as lost), else null. */
  get heldTerm(): bigint | null {
    return this.held?.term ?? null;
  }

  /** Milliseconds of validity left (0 when not held). */
  validForMs(): number {
    return this.held ? Math.max(0, this.held.validUntil - this.opts.clock.now()) : 0;
  }

  /** Raises the known term (from a peer, a stream, a refusal). */
  observeTerm(term: bigint): void {
    if (term > this.knownTerm) this.knownTerm = term;
  }

  /** Marks the lease lost locally if its validity ran out. Returns true if it did now. */
  checkExpiry(): boolean {
    if (this.held && this.opts.clock.now() >= this.held.validUntil) {
      const term = this.held.term;
      this.held = null;
      const why = this.lastError
        ? `lease could not be renewed before its validity ran out (${this.lastError})`
        : 'lease validity ran out before a renewal succeeded';
      this.emit({ type: 'lost', term, reason: why });
      return true;
    }
    return false;
  }

  /** One attempt: renew when holding, else try to acquire. Never throws. */
  async step(): Promise<void> {
    this.checkExpiry();
    const { store, clock, key, holder, ttlMs, safetyMarginMs } = this.opts;
    const sent = clock.now();
    const validity = ttlMs - safetyMarginMs;
    if (this.held) {
      const term = this.held.term;
      let ok: boolean;
      try {
        ok = await store.renew(key, holder, term, ttlMs);
        this.reached();
      } catch (err) {
        this.failed('renew', err);
        this.checkExpiry();
        return;
      }
      if (this.held?.term !== term) {
        // Declared lost meanwhile; if the store still had it, give it up properly.
        if (ok) void store.release(key, holder, term).catch(() => {});
        return;
      }
      if (ok) {
        this.held.validUntil = Math.max(this.held.validUntil, sent + validity);
        this.checkExpiry();
      } else {
        this.held = null;
        this.emit({
          type: 'lost',
          term,
          reason: 'lease is no longer ours in the lease store (expired or taken)',
        });
      }
      return;
    }
    if (this.opts.mayAcquire && !this.opts.mayAcquire()) {
      await this.readHolder();
      return;
    }
    try {
      const res = await store.acquire(key, holder, ttlMs, this.knownTerm + 1n);
      this.reached();
      if (res.acquired) {
        this.observeTerm(res.term);
        this.held = { term: res.term, validUntil: sent + validity };
        this.setHolder({ holder, term: res.term });
        if (this.checkExpiry()) return;
        this.emit({ type: 'acquired', term: res.term });
      } else {
        if (res.current) this.observeTerm(res.current.term);
        this.setHolder(res.current);
      }
    } catch (err) {
      this.failed('acquire', err);
    }
  }

  /** Reads the current holder (for processes that only follow). */
  async readHolder(): Promise<LeaseInfo | null> {
    try {
      const cur = await this.opts.store.read(this.opts.key);
      this.reached();
      if (cur) this.observeTerm(cur.term);
      this.setHolder(cur);
      return cur;
    } catch (err) {
      this.failed('read', err);
      return this.holderInfo;
    }
  }

  private reached(): void {
    const now = this.opts.clock.now();
    this.lastError = null;
    this.lastStoreContact = now;
    if (this.failingSince !== null) {
      const downMs = now - this.failingSince;
      this.failingSince = null;
      this.opts.onRecovered?.(downMs);
    }
  }

  private failed(op: string, err: unknown): void {
    this.lastError = errText(err);
    this.failingSince ??= this.opts.clock.now();
    this.opts.onError?.(op, err);
  }

  private setHolder(cur: LeaseInfo | null): void {
    const prev = this.holderInfo;
    if (prev?.holder === cur?.holder && prev?.term === cur?.term) return;
    this.holderInfo = cur;
    this.emit({ type: 'holder', current: cur });
  }

  /**
   * Gives the lease up now (CAS release) and forgets it locally. Used on shutdown
   * and when the holder learns of a higher term.
   */
  async relinquish(reason: string): Promise<void> {
    const h = this.held;
    if (!h) return;
    this.held = null;
    this.emit({ type: 'lost', term: h.term, reason });
    try {
      await this.opts.store.release(this.opts.key, this.opts.holder, h.term);
    } catch (err) {
      this.failed('release', err);
    }
  }

  /** Runs the renew/acquire loop and an expiry watchdog until stop(). */
  start(): void {
    if (this.running) return;
    this.running = true;
    void this.loop();
    void this.watchdog();
  }

  /** Wakes the loop for an immediate attempt (e.g. a peer announced a new leader). */
  poke(): void {
    this.wake.abort();
  }

  private async loop(): Promise<void> {
    const { clock } = this.opts;
    while (!this.stopCtl.signal.aborted) {
      const started = clock.now();
      await this.step();
      if (this.stopCtl.signal.aborted) break;
      // A holder renews every renewIntervalMs from each *send*, not after each answer:
      // on a loaded host (or lease store) answers slower than the interval still keep
      // the lease, since each success extends validity from its own send. Waiting a
      // full interval after a slow answer lost the lease under CPU starvation (netns
      // clock-skew window at load ~37, docs/faults.md).
      const wait = this.held
        ? Math.max(0, this.opts.renewIntervalMs - (clock.now() - started))
        : this.opts.retryIntervalMs;
      this.wake = new AbortController();
      await clock.sleep(wait, AbortSignal.any([this.wake.signal, this.stopCtl.signal]));
    }
  }

  private async watchdog(): Promise<void> {
    const { clock } = this.opts;
    while (!this.stopCtl.signal.aborted) {
      const wait = this.held ? Math.max(1, this.held.validUntil - clock.now()) : this.opts.retryIntervalMs;
      await clock.sleep(wait, this.stopCtl.signal);
      this.checkExpiry();
    }
  }

  /** Stops the loops and releases the lease if held. */
  async stop(): Promise<void> {
    this.stopCtl.abort();
    this.running = false;
    await this.relinquish('shutting down');
  }
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
