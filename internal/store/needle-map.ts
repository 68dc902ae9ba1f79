/**
 * The in-memory needle map: blob id → needle location, without storing keys.
 *
 * Open addressing with linear probing over parallel typed arrays; a slot is
 * 24 bytes:
 *
 *   hashLo u32 | hashHi u32 | offset/8 u32 | meta u32 (length/8 in bits 0..30,
 *   bit 31 = deleted) | volumeId u16 | stampLo u32 | stampHi u16
 *
 * The stamp (48 bits of ms since the epoch, up to year 10889) lets placement
 * digests be computed from memory in one pass (no header reads).
 *
 * `meta === 0` marks an empty slot (every needle is at least 48 bytes long).
 * The table grows ×1.4 when the load factor would exceed 0.8, so after the
 * first growth it is never below 0.57 full: at most 24 / 0.571 ≈ 42 bytes per
 * entry. Deletion is backward-shift (no tombstone slots).
 *
 * Only a 64-bit hash of the key is held, so the map is told how to read the key
 * stored at a location (`keyAt`, the blob id in the needle header on disk):
 *
 * - Each hash appears at most once in the table. Inserting a key whose hash is
 *   already present compares against the key stored at that slot's location;
 *   if it differs (a genuine 64-bit collision) the new key goes to a small
 *   `overflow` Map keyed by the full string.
 * - Lookups consult `overflow` first (exact string match); otherwise the slot
 *   with the key's hash is a candidate. `get`/`set`/`delete` confirm candidates
 *   with `keyAt`; `lookup` returns the unconfirmed candidate so the caller can
 *   confirm asynchronously against the header it reads anyway.
 *
 * Invariant: a key is in exactly one of {overflow, table}, so correctness never
 * depends on the hash being collision-free.
 *
 * Bytes per placement group (`trackGroups`): once told the cluster's group
 * count, the map keeps the live (not deleted) needle bytes of each group,
 * adjusted on every change of an entry — O(1) per write, tombstone or
 * compaction move — so a heartbeat reports them without a scan. The group is the
 * one placement.ts gives the key (high half of its hash mod the group count).
 */
import { hashKey64, type KeyHash } from '../common/key-hash.js';
import { groupOfHash } from '../common/placement.js';

export interface NeedleLocation {
  volumeId: number;
  /** Byte offset of the needle in the volume file (multiple of 8, < 32 GiB). */
  offset: number;
  /** Total needle length on disk in bytes (multiple of 8, < 16 GiB). */
  length: number;
  /** The entry is a tombstone: the blob was deleted. */
  deleted: boolean;
  /** The needle's stamp (ms since the epoch, < 2^48); 0 when not given. Always set on reads. */
  stamp?: number;
}

/** Reads the key stored at a location; undefined if unreadable. */
export type KeyAt = (location: NeedleLocation) => string | undefined;

export interface NeedleMapOptions {
  keyAt: KeyAt;
  hash?: KeyHash;
  initialCapacity?: number;
}

export const MAX_VOLUME_ID = 0xffff;
export const MAX_OFFSET = 2 ** 35 - 8;
export const MAX_LENGTH = 2 ** 34 - 8;
/** Largest stamp the map holds (48 bits). */
export const MAX_STAMP = 2 ** 48 - 1;
const MAX_LOAD = 0.8;
const GROWTH = 1.4;
const DELETED_BIT = 0x80000000;
const TWO32 = 4294967296;

function checkLocation(loc: NeedleLocation): void {
  if (
    !Number.isInteger(loc.volumeId) ||
    loc.volumeId < 0 ||
    loc.volumeId > MAX_VOLUME_ID ||
    loc.offset % 8 !== 0 ||
    loc.offset < 0 ||
    loc.offset > MAX_OFFSET ||
    loc.length % 8 !== 0 ||
    loc.length <= 0 ||
    loc.length > MAX_LENGTH ||
    !(
      loc.stamp === undefined ||
      (Number.isSafeInteger(loc.stamp) && loc.stamp >= 0 && loc.stamp <= MAX_STAMP)
    )
  ) {
    throw new RangeError(`needle location out of range: ${JSON.stringify(loc)}`);
  }
}

/** Bytes a location counts as live: its length, 0 for a tombstone. */
function liveLength(loc: NeedleLocation): number {
  return loc.deleted ? 0 : loc.length;
}

export class NeedleMap {
  private cap: number;
  private count = 0;
  private hLo: Uint32Array;
  private hHi: Uint32Array;
  private off8: Uint32Array;
  private meta: Uint32Array;
  private vol: Uint16Array;
  private stLo: Uint32Array;
  private stHi: Uint16Array;
  private readonly overflow = new Map<string, NeedleLocation>();
  private readonly keyAt: KeyAt;
  private readonly hash: KeyHash;
  private readonly h = new Uint32Array(2);
  /** Scratch for hashing overflow keys while `h` is in use. */
  private readonly oh = new Uint32Array(2);
  /** Live needle bytes per placement group (trackGroups); empty until then. */
  private groupBytes = new Float64Array(0);

  constructor(opts: NeedleMapOptions) {
    this.keyAt = opts.keyAt;
    this.hash = opts.hash ?? hashKey64;
    this.cap = Math.max(16, Math.ceil((opts.initialCapacity ?? 1024) / MAX_LOAD));
    this.hLo = new Uint32Array(this.cap);
    this.hHi = new Uint32Array(this.cap);
    this.off8 = new Uint32Array(this.cap);
    this.meta = new Uint32Array(this.cap);
    this.vol = new Uint16Array(this.cap);
    this.stLo = new Uint32Array(this.cap);
    this.stHi = new Uint16Array(this.cap);
  }

  /** Entries (table + overflow). */
  get size(): number {
    return this.count + this.overflow.size;
  }
  get overflowSize(): number {
    return this.overflow.size;
  }
  get capacity(): number {
    return this.cap;
  }
  /** Bytes held by the typed arrays (overflow entries excluded). */
  get tableBytes(): number {
    return this.cap * 24;
  }

  private home(lo: number, cap: number): number {
    const i = Math.floor((lo * cap) / TWO32);
    return i >= cap ? cap - 1 : i;
  }

  /** Slot holding this hash, or -1. */
  private findSlot(lo: number, hi: number): number {
    const cap = this.cap;
    let i = this.home(lo, cap);
    const meta = this.meta;
    const hLo = this.hLo;
    const hHi = this.hHi;
    while (meta[i] !== 0) {
      if (hLo[i] === lo && hHi[i] === hi) return i;
      i++;
      if (i === cap) i = 0;
    }
    return -1;
  }

  private locAt(i: number): NeedleLocation {
    const m = this.meta[i]!;
    return {
      volumeId: this.vol[i]!,
      offset: this.off8[i]! * 8,
      length: (m & ~DELETED_BIT) * 8,
      deleted: (m & DELETED_BIT) !== 0,
      stamp: this.stHi[i]! * TWO32 + this.stLo[i]!,
    };
  }

  /** Writes slot i (empty, or holding this hash already: an update). */
  private writeSlot(i: number, lo: number, hi: number, loc: NeedleLocation): void {
    if (this.groupBytes.length !== 0) this.account(hi, liveLength(loc) - this.liveAt(i));
    this.hLo[i] = lo;
    this.hHi[i] = hi;
    this.vol[i] = loc.volumeId;
    this.off8[i] = loc.offset / 8;
    this.meta[i] = ((loc.length / 8) | (loc.deleted ? DELETED_BIT : 0)) >>> 0;
    const stamp = loc.stamp ?? 0;
    this.stLo[i] = stamp % TWO32;
    this.stHi[i] = Math.floor(stamp / TWO32);
  }

  /**
   * Unconfirmed candidate for `key`: the overflow entry, or the table entry
   * with the same hash (which may belong to another key). The caller must
   * compare `key` with the key stored at the returned location.
   */
  lookup(key: string): NeedleLocation | undefined {
    if (this.overflow.size !== 0) {
      const o = this.overflow.get(key);
      if (o !== undefined) return o;
    }
    this.hash(key, this.h);
    const i = this.findSlot(this.h[0]!, this.h[1]!);
    return i < 0 ? undefined : this.locAt(i);
  }

  /** Confirmed lookup (calls keyAt on a table hit). */
  get(key: string): NeedleLocation | undefined {
    if (this.overflow.size !== 0) {
      const o = this.overflow.get(key);
      if (o !== undefined) return o;
    }
    this.hash(key, this.h);
    const i = this.findSlot(this.h[0]!, this.h[1]!);
    if (i < 0) return undefined;
    const loc = this.locAt(i);
    return this.keyAt(loc) === key ? loc : undefined;
  }

  /** Inserts or updates `key`. */
  set(key: string, loc: NeedleLocation): void {
    checkLocation(loc);
    const prior = this.overflow.get(key);
    if (prior !== undefined) {
      this.setOverflow(key, loc, prior);
      return;
    }
    this.hash(key, this.h);
    const lo = this.h[0]!;
    const hi = this.h[1]!;
    const i = this.findSlot(lo, hi);
    if (i >= 0) {
      if (this.keyAt(this.locAt(i)) === key) {
        this.writeSlot(i, lo, hi, loc);
      } else {
        this.setOverflow(key, loc, undefined); // genuine hash collision
      }
      return;
    }
    if (this.count + 1 > this.cap * MAX_LOAD) this.resize(Math.ceil(this.cap * GROWTH));
    this.insertNew(lo, hi, loc);
  }

  private insertNew(lo: number, hi: number, loc: NeedleLocation): void {
    const cap = this.cap;
    let i = this.home(lo, cap);
    while (this.meta[i] !== 0) {
      i++;
      if (i === cap) i = 0;
    }
    this.writeSlot(i, lo, hi, loc);
    this.count++;
  }

  /**
   * Replaces the location of `key` only if it currently is `expected` (same
   * volume and offset). Needs no key read: a location holds exactly one key,
   * so a slot at `expected` can only belong to `key`.
   */
  replace(key: string, expected: { volumeId: number; offset: number }, next: NeedleLocation): boolean {
    checkLocation(next);
    const o = this.overflow.get(key);
    if (o !== undefined) {
      if (o.volumeId !== expected.volumeId || o.offset !== expected.offset) return false;
      this.setOverflow(key, next, o);
      return true;
    }
    this.hash(key, this.h);
    const i = this.findSlot(this.h[0]!, this.h[1]!);
    if (i < 0 || this.vol[i] !== expected.volumeId || this.off8[i]! * 8 !== expected.offset) return false;
    this.writeSlot(i, this.h[0]!, this.h[1]!, next);
    return true;
  }

  /** Removes `key` (confirmed); returns whether it was present. */
  delete(key: string): boolean {
    const o = this.overflow.get(key);
    if (o !== undefined) {
      this.overflow.delete(key);
      if (this.groupBytes.length !== 0) this.accountKey(key, -liveLength(o));
      return true;
    }
    this.hash(key, this.h);
    const i = this.findSlot(this.h[0]!, this.h[1]!);
    if (i < 0 || this.keyAt(this.locAt(i)) !== key) return false;
    this.removeSlot(i);
    return true;
  }

  private removeSlot(slot: number): void {
    if (this.groupBytes.length !== 0) this.account(this.hHi[slot]!, -this.liveAt(slot));
    const cap = this.cap;
    let i = slot;
    let j = slot;
    for (;;) {
      j++;
      if (j === cap) j = 0;
      if (this.meta[j] === 0) break;
      const k = this.home(this.hLo[j]!, cap);
      // Entry at j may move to i only if its home is not cyclically within (i, j].
      const stays = i <= j ? i < k && k <= j : i < k || k <= j;
      if (stays) continue;
      this.hLo[i] = this.hLo[j]!;
      this.hHi[i] = this.hHi[j]!;
      this.vol[i] = this.vol[j]!;
      this.off8[i] = this.off8[j]!;
      this.meta[i] = this.meta[j]!;
      this.stLo[i] = this.stLo[j]!;
      this.stHi[i] = this.stHi[j]!;
      i = j;
    }
    this.meta[i] = 0;
    this.count--;
  }

  private setOverflow(key: string, loc: NeedleLocation, prior: NeedleLocation | undefined): void {
    this.overflow.set(key, { ...loc });
    if (this.groupBytes.length !== 0)
      this.accountKey(key, liveLength(loc) - (prior === undefined ? 0 : liveLength(prior)));
  }

  /** Live bytes of the entry in slot i (0 for an empty slot or a tombstone). */
  private liveAt(i: number): number {
    const m = this.meta[i]!;
    return m === 0 || (m & DELETED_BIT) !== 0 ? 0 : m * 8;
  }

  private account(hashHigh: number, delta: number): void {
    if (delta !== 0) this.groupBytes[groupOfHash(hashHigh, this.groupBytes.length)]! += delta;
  }

  private accountKey(key: string, delta: number): void {
    this.hash(key, this.oh);
    this.account(this.oh[1]!, delta);
  }

  /**
   * Keeps live needle bytes per placement group among `groupCount` groups from
   * now on: one pass over the map to start (O(entries)), then O(1) per change.
   * Again with another count starts over; 0 stops.
   */
  trackGroups(groupCount: number): void {
    if (groupCount === this.groupBytes.length) return;
    this.groupBytes = new Float64Array(groupCount);
    if (groupCount === 0) return;
    for (let i = 0; i < this.cap; i++) if (this.meta[i] !== 0) this.account(this.hHi[i]!, this.liveAt(i));
    for (const [key, loc] of this.overflow) this.accountKey(key, liveLength(loc));
  }

  /** The group count being tracked (0: none). */
  get trackedGroups(): number {
    return this.groupBytes.length;
  }

  /** Groups with live needles and their bytes, in group order (empty when not tracking). */
  liveBytesByGroup(): { group: number; bytes: number }[] {
    const out: { group: number; bytes: number }[] = [];
    const b = this.groupBytes;
    for (let g = 0; g < b.length; g++) if (b[g]! > 0) out.push({ group: g, bytes: b[g]! });
    return out;
  }

  private resize(newCap: number): void {
    const { hLo, hHi, vol, off8, meta, stLo, stHi } = this;
    const oldCap = this.cap;
    this.cap = newCap;
    this.hLo = new Uint32Array(newCap);
    this.hHi = new Uint32Array(newCap);
    this.vol = new Uint16Array(newCap);
    this.off8 = new Uint32Array(newCap);
    this.meta = new Uint32Array(newCap);
    this.stLo = new Uint32Array(newCap);
    this.stHi = new Uint16Array(newCap);
    for (let s = 0; s < oldCap; s++) {
      if (meta[s] === 0) continue;
      let i = this.home(hLo[s]!, newCap);
      while (this.meta[i] !== 0) {
        i++;
        if (i === newCap) i = 0;
      }
      this.hLo[i] = hLo[s]!;
      this.hHi[i] = hHi[s]!;
      this.vol[i] = vol[s]!;
      this.off8[i] = off8[s]!;
      this.meta[i] = meta[s]!;
      this.stLo[i] = stLo[s]!;
      this.stHi[i] = stHi[s]!;
    }
  }

  /** Writes the map's 64-bit hash of `key` into out[0] (low) and out[1] (high). */
  hashOf(key: string, out: Uint32Array): void {
    this.hash(key, out);
  }

  /** Calls `fn` for every entry (no keys: only locations). */
  forEach(fn: (loc: NeedleLocation) => void): void {
    for (let i = 0; i < this.cap; i++) if (this.meta[i] !== 0) fn(this.locAt(i));
    for (const loc of this.overflow.values()) fn({ stamp: 0, ...loc });
  }

  /**
   * Calls `fn` for every entry with its key hash, without allocating: `stamp`
   * as stored, `deleted` from the entry. `key` is given only for overflow
   * entries (the table keeps no keys). Must not modify the map.
   */
  forEachHashed(
    fn: (hashLo: number, hashHi: number, stamp: number, deleted: boolean, key: string | undefined) => void,
  ): void {
    const { meta, hLo, hHi, stLo, stHi } = this;
    for (let i = 0; i < this.cap; i++) {
      const m = meta[i]!;
      if (m === 0) continue;
      fn(hLo[i]!, hHi[i]!, stHi[i]! * TWO32 + stLo[i]!, (m & DELETED_BIT) !== 0, undefined);
    }
    const h = new Uint32Array(2);
    for (const [key, loc] of this.overflow) {
      this.hash(key, h);
      fn(h[0]!, h[1]!, loc.stamp ?? 0, loc.deleted, key);
    }
  }

  /**
   * Every entry with exactly this key hash (the table entry, and overflow
   * entries whose key hashes the same): the keyless way to reach an entry
   * found by `forEachHashed`.
   */
  withHash(hashLo: number, hashHi: number): { loc: NeedleLocation; key?: string }[] {
    const out: { loc: NeedleLocation; key?: string }[] = [];
    const i = this.findSlot(hashLo >>> 0, hashHi >>> 0);
    if (i >= 0) out.push({ loc: this.locAt(i) });
    if (this.overflow.size !== 0) {
      const h = new Uint32Array(2);
      for (const [key, loc] of this.overflow) {
        this.hash(key, h);
        if (h[0] === hashLo >>> 0 && h[1] === hashHi >>> 0) out.push({ loc: { stamp: 0, ...loc }, key });
      }
    }
    return out;
  }
}
