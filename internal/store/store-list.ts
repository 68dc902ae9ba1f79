/**
 * Listings: live needles in id order (`listNeedles`, garbage collection),
 * one placement group's newest needles (`listPlacementGroup`), and per-group
 * digests (`placementDigests`, anti-entropy).
 *
 * The needle map keeps only each id's 64-bit hash, so a placement group is
 * found by hash (group = groupOfHash(high half), internal/common/placement.ts)
 * and its ids and facts come from the needle headers on disk. A group is
 * listed in (hash, id) order: it depends on the ids alone, so page tokens stay
 * valid across compaction, restarts and new writes (an id written behind the
 * token is not seen by that listing, as with any paged listing).
 */
import { checkGroupCount, groupOfHash } from '../common/placement.js';
import { InvalidArgumentError } from './errors.js';
import { INDEX_HEADER_SIZE, scanIndexFile } from './index-file.js';
import { FLAG_DELETED } from './needle.js';
import { needleDigest } from './placement-digest.js';
import type { NeedleFactsInfo, StoreCore } from './store-core.js';

export interface NeedleListing {
  blobId: string;
  volumeId: number;
  size: number;
  cookie: bigint;
  writtenAtMs: number;
}

/**
 * Live needles with blob id > `afterBlobId`, in blob id order, at most `limit`.
 * Reads the index files (for garbage collection; not a hot path).
 */
export async function listNeedles(
  core: StoreCore,
  afterBlobId: string | undefined,
  limit: number,
): Promise<NeedleListing[]> {
  core.checkOpen();
  const best: NeedleListing[] = [];
  if (limit <= 0) return best;
  for (const v of core.orderedVolumes()) {
    for (let attempt = 0; ; attempt++) {
      const gen = v.generation;
      const file = v.idx;
      if (!file.acquire()) continue;
      const found: NeedleListing[] = [];
      try {
        await scanIndexFile(file.handle, INDEX_HEADER_SIZE, v.idxTail, (r) => {
          if (r.flags & FLAG_DELETED) return;
          if (afterBlobId !== undefined && r.key <= afterBlobId) return;
          if (best.length === limit && r.key >= best[limit - 1]!.blobId) return;
          const cur = core.map.lookup(r.key);
          if (!cur || cur.deleted || cur.volumeId !== v.id || cur.offset !== r.offset) return;
          found.push({
            blobId: r.key,
            volumeId: v.id,
            size: r.dataSize,
            cookie: r.cookie,
            writtenAtMs: r.writtenAtMs,
          });
        });
      } finally {
        file.release();
      }
      if (v.generation !== gen && attempt < 3) continue; // compacted meanwhile: rescan
      for (const n of found) {
        if (best.length === limit && n.blobId >= best[limit - 1]!.blobId) continue;
        let lo = 0;
        let hi = best.length;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (best[mid]!.blobId < n.blobId) lo = mid + 1;
          else hi = mid;
        }
        best.splice(lo, 0, n);
        if (best.length > limit) best.pop();
      }
      break;
    }
  }
  return best;
}

// ------------------------------------------------------------------ placement groups

/** A position in a group listing: after every (hash, id) ≤ this. */
export interface GroupCursor {
  hashHi: number;
  hashLo: number;
  /** The last id listed or skipped at this hash. */
  key: string;
}

export interface ListGroupOptions {
  groupCount: number;
  group: number;
  after?: GroupCursor;
  /** At most this many needles (1..1000). */
  limit: number;
  includeDeleted?: boolean;
  prefix?: string;
  /** Needle reads allowed for this page (default GROUP_PAGE_READS; tests lower it). */
  readBudget?: number;
}

export interface GroupPage {
  needles: NeedleFactsInfo[];
  /** Where the next page starts; undefined at the end. */
  next?: GroupCursor;
}

/** Largest page of a group listing. */
export const MAX_GROUP_PAGE = 1000;
/**
 * Needle headers one page reads at most (ids filtered out by the prefix, or
 * racing a compaction, count too): bounds a page's disk work whatever the
 * prefix. A page may hold fewer than `limit` needles, even none, and still
 * have a next cursor.
 */
export const GROUP_PAGE_READS = 2000;
/** Needles up to this length are read whole by a listing (one pread); longer ones: header, then footer. */
const LIST_WHOLE_MAX = 4096;
/** Sorts after every blob id character: a cursor past every id of a hash. */
const AFTER_EVERY_ID = '\u007f';

function cmpHash(aHi: number, aLo: number, bHi: number, bLo: number): number {
  return aHi !== bHi ? aHi - bHi : aLo - bLo;
}

/**
 * One page of the newest needles of placement group `group` held here, in
 * (hash, id) order. Cost per page: one pass over the needle map (O(table
 * slots), no I/O), then at most GROUP_PAGE_READS needle reads (a needle up
 * to 4 KiB is read whole in one pread; a larger one costs a header read and a
 * footer read).
 */
export async function listPlacementGroup(core: StoreCore, o: ListGroupOptions): Promise<GroupPage> {
  core.checkOpen();
  const problem = checkGroupCount(o.groupCount);
  if (problem) throw new InvalidArgumentError(problem);
  if (!Number.isInteger(o.group) || o.group < 0 || o.group >= o.groupCount) {
    throw new InvalidArgumentError(`group ${o.group} is outside 0..${o.groupCount - 1}`);
  }
  if (!Number.isInteger(o.limit) || o.limit < 1 || o.limit > MAX_GROUP_PAGE) {
    throw new InvalidArgumentError(`page size ${o.limit} is outside 1..${MAX_GROUP_PAGE}`);
  }
  const after = o.after;
  const prefix = o.prefix ?? '';
  const budget = Math.max(1, Math.min(o.readBudget ?? GROUP_PAGE_READS, GROUP_PAGE_READS));
  // 1. One pass over the map: the group's hashes after the cursor, smallest first,
  //    at most `budget` of them (kept by periodic sort-and-cut).
  let hashes: number[] = []; // pairs: hi, lo
  let truncated = false;
  const cut = () => {
    const pairs: [number, number][] = [];
    for (let i = 0; i < hashes.length; i += 2) pairs.push([hashes[i]!, hashes[i + 1]!]);
    pairs.sort((a, b) => cmpHash(a[0], a[1], b[0], b[1]));
    const out: number[] = [];
    let last: [number, number] | undefined;
    for (const p of pairs) {
      if (last && last[0] === p[0] && last[1] === p[1]) continue; // a hash shared by overflow keys
      if (out.length / 2 >= budget) {
        truncated = true;
        break;
      }
      out.push(p[0], p[1]);
      last = p;
    }
    hashes = out;
  };
  core.map.forEachHashed((lo, hi, _stamp, deleted) => {
    if (groupOfHash(hi, o.groupCount) !== o.group) return;
    if (deleted && !o.includeDeleted) return;
    if (after) {
      const c = cmpHash(hi, lo, after.hashHi, after.hashLo);
      if (c < 0 || (c === 0 && after.key === AFTER_EVERY_ID)) return; // listed or skipped already
    }
    hashes.push(hi, lo);
    if (hashes.length >= 4 * budget) cut();
  });
  cut();

  // 2. Read the needles in (hash, id) order until the page is full or the read budget is spent.
  const needles: NeedleFactsInfo[] = [];
  let reads = 0;
  let position: GroupCursor | undefined;
  for (let i = 0; i < hashes.length; i += 2) {
    if (needles.length >= o.limit || reads >= budget) return { needles, next: position! };
    const hi = hashes[i]!;
    const lo = hashes[i + 1]!;
    const found = await needlesWithHash(core, hi, lo);
    reads += Math.max(1, found.length);
    found.sort((a, b) => (a.blobId < b.blobId ? -1 : a.blobId > b.blobId ? 1 : 0));
    for (const f of found) {
      if (after && hi === after.hashHi && lo === after.hashLo && f.blobId <= after.key) continue;
      if (needles.length >= o.limit) return { needles, next: position! }; // the rest of this hash next time
      position = { hashHi: hi, hashLo: lo, key: f.blobId };
      if (f.deleted && !o.includeDeleted) continue;
      if (!f.blobId.startsWith(prefix)) continue;
      needles.push(f);
    }
    position = { hashHi: hi, hashLo: lo, key: AFTER_EVERY_ID }; // this hash is done
  }
  return truncated && position ? { needles, next: position } : { needles };
}

/** The newest needles here whose id hashes to (hi, lo), with their facts; unreadable ones are skipped. */
async function needlesWithHash(core: StoreCore, hi: number, lo: number): Promise<NeedleFactsInfo[]> {
  const out: NeedleFactsInfo[] = [];
  const h = new Uint32Array(2);
  for (let attempt = 0; attempt < 4; attempt++) {
    let moved = false;
    out.length = 0;
    for (const { loc } of core.map.withHash(lo, hi)) {
      let r: Awaited<ReturnType<StoreCore['readAt']>>;
      try {
        r = await core.readAt(loc, LIST_WHOLE_MAX);
      } catch {
        continue; // corrupt header: scrub reports it; not listed
      }
      if (!r) {
        moved = true; // compaction replaced the file: look again
        break;
      }
      try {
        core.map.hashOf(r.header.key, h);
        if (h[0] !== lo || h[1] !== hi) continue;
        out.push(await core.factsOf(r));
      } catch {
        // corrupt footer: not listed
      } finally {
        r.file.release();
      }
    }
    if (!moved) return out;
  }
  return out;
}

/** One group's digest: how many ids have a newest needle here, and the XOR of their needle digests. */
export interface GroupDigest {
  group: number;
  needles: number;
  /** 64-bit XOR digest. */
  digest: bigint;
}

/**
 * Per placement group (among `groupCount`), the count and XOR digest of the
 * newest needle of every id held here (live and tombstones), for the groups
 * with at least one, in group order. One pass over the needle map (stamps are
 * in the map): O(table slots) CPU, no I/O — about 30-60 ms per 10 M needles on
 * the dev box — plus O(groupCount) memory.
 */
export function placementDigests(core: StoreCore, groupCount: number): GroupDigest[] {
  core.checkOpen();
  const problem = checkGroupCount(groupCount);
  if (problem) throw new InvalidArgumentError(problem);
  const counts = new Float64Array(groupCount);
  const dLo = new Uint32Array(groupCount);
  const dHi = new Uint32Array(groupCount);
  const d = new Uint32Array(2);
  core.map.forEachHashed((lo, hi, stamp, deleted) => {
    const g = groupOfHash(hi, groupCount);
    counts[g]!++;
    needleDigest(lo, hi, stamp, deleted, d);
    dLo[g] = (dLo[g]! ^ d[0]!) >>> 0;
    dHi[g] = (dHi[g]! ^ d[1]!) >>> 0;
  });
  const out: GroupDigest[] = [];
  for (let g = 0; g < groupCount; g++) {
    if (counts[g] === 0) continue;
    out.push({ group: g, needles: counts[g]!, digest: (BigInt(dHi[g]!) << 32n) | BigInt(dLo[g]!) });
  }
  return out;
}
