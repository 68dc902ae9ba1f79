import {
  type AcquireResult,
  type Clock,
  type LeaseInfo,
  type LeaseStore,
  systemClock,
} from './lease-store.js';

/**
 * An in-process LeaseStore with the same semantics as the Redis one (TTL on the
 * given clock, counter-based terms, compare-and-set renew and release). For unit
 * tests (with a fake clock) and for a single directory without Redis.
 */
export class MemoryLeaseStore implements LeaseStore {
  private readonly leases = new Map<string, { info: LeaseInfo; expiresAt: number }>();
  private readonly counters = new Map<string, bigint>();
  /** When set, every call fails as if the store were unreachable. */
  unreachable = false;

  constructor(private readonly clock: Clock = systemClock) {}

  private check(): void {
    if (this.unreachable) throw new Error('lease store unreachable');
  }

  private live(key: string): { info: LeaseInfo; expiresAt: number } | undefined {
    const l = this.leases.get(key);
    if (l && l.expiresAt <= this.clock.now()) {
      this.leases.delete(key);
      return undefined;
    }
    return l;
  }

  async acquire(key: string, holder: string, ttlMs: number, minTerm: bigint): Promise<AcquireResult> {
    this.check();
    const cur = this.live(key);
    if (cur) return { acquired: false, current: { ...cur.info } };
    let term = (this.counters.get(`${key}:term`) ?? 0n) + 1n;
    if (term < minTerm) term = minTerm;
    this.counters.set(`${key}:term`, term);
    this.leases.set(key, { info: { holder, term }, expiresAt: this.clock.now() + ttlMs });
    return { acquired: true, term };
  }

  async renew(key: string, holder: string, term: bigint, ttlMs: number): Promise<boolean> {
    this.check();
    const cur = this.live(key);
    if (!cur || cur.info.holder !== holder || cur.info.term !== term) return false;
    cur.expiresAt = this.clock.now() + ttlMs;
    return true;
  }

  async release(key: string, holder: string, term: bigint): Promise<boolean> {
    this.check();
    const cur = this.live(key);
    if (!cur || cur.info.holder !== holder || cur.info.term !== term) return false;
    this.leases.delete(key);
    return true;
  }

  async read(key: string): Promise<LeaseInfo | null> {
    this.check();
    const cur = this.live(key);
    return cur ? { ...cur.info } : null;
  }

  async close(): Promise<void> {}
}
