import type { PlacementGroup } from '../../gen/haystack/v1/metadata_pb.js';
import type { NeedleFacts } from '../../gen/haystack/v1/store_pb.js';
import { copyNeedle } from './needle-copy.js';
import type { StoreView } from './placement.js';
import type { PlacementEnv } from './placement-env.js';
import { type GroupDigest, type NeedleCopy, planGroupRepair } from './placement-planner.js';
import { storeCallError, TaskError } from './store-calls.js';

/**
 * Bringing the members of one placement group to the newest needle per id
 * (backfill's final step and anti-entropy's repair). Copies need no per-pair lock:
 * a keep_stamp copy and a stamped tombstone only ever replace an older needle, so
 * copies, gateway writes and deletes commute and the members converge whatever
 * order they land in.
 */

/** Needles one listing holds in memory at most (a group is blobs / group count; 10¹⁰ / 65 536 ≈ 150 000). */
export const MAX_GROUP_LISTING = 2_000_000;
const PAGE = 1000;

/**
 * Every needle of a group on one store, newest per id, tombstones included.
 * `onPage` sees each page as it arrives (backfill copies while it lists).
 */
export async function listGroup(
  env: PlacementEnv,
  store: StoreView,
  group: number,
  onPage?: (needles: NeedleFacts[]) => Promise<void>,
  max = MAX_GROUP_LISTING,
): Promise<Map<string, NeedleFacts>> {
  const out = new Map<string, NeedleFacts>();
  const groupCount = env.mirror.placement.groupCount;
  let token = '';
  do {
    env.ensureActing();
    let page: Awaited<ReturnType<ReturnType<PlacementEnv['store']>['listPlacementGroup']>>;
    try {
      page = await env
        .store(store)
        .listPlacementGroup(
          { groupCount, group, pageToken: token, pageSize: PAGE, includeDeleted: true },
          { timeoutMs: 30_000, signal: env.signal() },
        );
    } catch (err) {
      throw storeCallError(`listing group ${group} on ${store.storeId}`, err);
    }
    if (onPage) await onPage(page.needles);
    else for (const n of page.needles) out.set(n.blobId, n);
    if (out.size > max) {
      throw new TaskError(`group ${group} on ${store.storeId} holds more than ${max} needles`, {
        storeFault: false,
        retryable: false,
      });
    }
    // A token that does not move would page forever: trust no store.
    if (page.nextPageToken !== '' && page.nextPageToken === token) {
      throw new TaskError(`${store.storeId} repeated page token of group ${group}`, {
        storeFault: true,
        retryable: true,
      });
    }
    token = page.nextPageToken;
  } while (token !== '');
  return out;
}

/** Runs fn over items, at most n at a time. */
export async function forEachLimit<T>(
  items: readonly T[],
  n: number,
  fn: (t: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(n, items.length)) }, worker));
}

export interface SyncResult {
  /** Needles listed over all members. */
  listed: number;
  /** Copies made. */
  copies: number;
  /** Stores a planned copy to failed on (they may still lack a settled needle). */
  failedTo: Set<string>;
  /** Sources whose copy failed verification. */
  corruptSources: Set<string>;
}

/**
 * Lists the group on each of `members` and copies the newest needle of every id
 * stamped before `settledBefore` to those lacking it (planGroupRepair), at most
 * REPLICATION_WORKERS copies at once. Live needles are copied from `sources` only.
 */
export async function syncGroup(
  env: PlacementEnv,
  g: PlacementGroup,
  o: { members: readonly string[]; sources: ReadonlySet<string>; settledBefore: bigint },
): Promise<SyncResult> {
  const listings = new Map<string, Map<string, NeedleFacts>>();
  const res: SyncResult = { listed: 0, copies: 0, failedTo: new Set(), corruptSources: new Set() };
  for (const id of o.members) {
    const s = env.mirror.stores.get(id);
    if (!s) continue;
    const l = await listGroup(env, s, g.group);
    listings.set(id, l);
    res.listed += l.size;
  }
  const plan = planGroupRepair(listings, { sources: o.sources, settledBefore: o.settledBefore });
  await forEachLimit(plan, env.cfg.replicationWorkers, async (c: NeedleCopy) => {
    const from = env.mirror.stores.get(c.from);
    const to = env.mirror.stores.get(c.to);
    if (!from || !to) {
      res.failedTo.add(c.to);
      return;
    }
    try {
      const outcome = await copyNeedle(env, c.needle, from, to);
      if (outcome === 'copied') res.copies++;
      else {
        // 'gone': superseded since the listing; the next comparison decides.
        res.failedTo.add(c.to);
        if (outcome === 'source-corrupt') res.corruptSources.add(c.from);
      }
    } catch (err) {
      res.failedTo.add(c.to);
      env.log.debug(
        { group: g.group, blob: c.needle.blobId, to: c.to, err: String(err) },
        'group copy failed',
      );
    }
  });
  if (res.copies > 0) env.log.info({ group: g.group, copies: res.copies }, 'placement group synced');
  return res;
}

/** Each store's per-group digests (GetPlacementDigests); a store that does not answer is left out. */
export async function fetchDigests(
  env: PlacementEnv,
  storeIds: ReadonlySet<string>,
): Promise<Map<string, Map<number, GroupDigest>>> {
  const out = new Map<string, Map<number, GroupDigest>>();
  await forEachLimit([...storeIds], 8, async (id) => {
    const s = env.mirror.stores.get(id);
    if (!s || !env.acting()) return;
    try {
      const res = await env
        .store(s)
        .getPlacementDigests(
          { groupCount: env.mirror.placement.groupCount },
          { timeoutMs: 30_000, signal: env.signal() },
        );
      out.set(id, new Map(res.digests.map((d) => [d.group, { needles: d.needles, digest: d.digest }])));
    } catch (err) {
      env.log.debug({ store: id, err: String(err) }, 'placement digests unavailable');
    }
  });
  return out;
}
