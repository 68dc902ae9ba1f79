import { create } from '@bufbuild/protobuf';
import { pino } from 'pino';
import {
  BlobMetaSchema,
  BlobState,
  type ReplicaLocation,
  ReplicaLocationSchema,
} from '../../gen/haystack/v1/common_pb.js';
import { type BlobLocation, BlobLocationSchema } from '../../gen/haystack/v1/directory_pb.js';
import { PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import type { NeedleFacts } from '../../gen/haystack/v1/store_pb.js';
import type { DirectoryClient } from '../../internal/directory/client.js';
import { PlacementView } from '../../internal/gateway/placement-view.js';
import { store } from './oplog.js';

/**
 * Where the checker finds blobs, on either layout:
 * - per-blob records (v1): Locate as of the latest commit — a follower answers
 *   only once it has applied the highest commit index any instance reports, as a
 *   gateway's reads do;
 * - placement groups: the placement map followed up to that commit index, then
 *   each ACTIVE member and extra replica asked for the needle (Stat). A blob is
 *   found when any of them holds it live; its replicas are the ACTIVE members and
 *   extras; its target is the group size or the raised target, whichever is larger.
 */
export async function locateAll(dir: DirectoryClient, ids: string[]): Promise<Map<string, BlobLocation>> {
  const out = new Map<string, BlobLocation>();
  const { minIndex, placed } = await latestCommit(dir);
  if (placed) return locatePlaced(dir, ids, minIndex);
  for (let i = 0; i < ids.length; i += 500) {
    const res = await dir.locate(ids.slice(i, i + 500), minIndex);
    for (const l of res.locations) out.set(l.blobId, l);
  }
  return out;
}

const quiet = pino({ level: 'silent' });

/** The latest commit index any directory reports (what a read must have applied). */
async function latestCommit(dir: DirectoryClient): Promise<{ minIndex: bigint; placed: boolean }> {
  const status = await dir.getClusterStatus();
  let minIndex = 0n;
  for (const d of status.directories) if (d.commitIndex > minIndex) minIndex = d.commitIndex;
  return { minIndex, placed: status.placementGroupCount > 0 };
}

/** Runs `fn` on the placement map followed up to `minIndex` (one watch stream). */
async function withPlacement<T>(
  dir: DirectoryClient,
  minIndex: bigint,
  fn: (state: PlacementView['state']) => Promise<T>,
): Promise<T> {
  const view = new PlacementView((req, signal) => dir.watchMetadata(req, signal), 'fault-checker', quiet);
  view.start();
  try {
    await view.whenReady(20_000);
    const deadline = Date.now() + 60_000;
    // As a gateway does: a view that applies nothing while the commit index is ahead
    // follows another directory (a directory cut off from its peers keeps serving its
    // old state, keepalives included). A network-fault run on 26a5be6 failed here with
    // the view following the cut-off directory-2 for the whole 20 s.
    while (!(await view.catchUp(5_000, async () => minIndex))) {
      if (Date.now() > deadline)
        throw new Error(`placement view stuck at ${view.state.appliedIndex} < ${minIndex}`);
    }
    return await fn(view.state);
  } finally {
    view.stop();
  }
}

/** A blob's holders by the placement map: the ACTIVE members of its group and its extra replicas. */
function placedHolders(
  state: PlacementView['state'],
  id: string,
): { replicas: ReplicaLocation[]; target: number } {
  const g = state.placement.groupFor(id);
  const extras = state.placement.extras.get(id);
  const holders = [
    ...(g?.members.filter((m) => m.state === PlacementMemberState.ACTIVE).map((m) => m.storeId) ?? []),
    ...(extras?.replicas.map((r) => r.storeId) ?? []),
  ];
  const replicas = holders.map((storeId) => {
    const rec = state.stores.get(storeId);
    return create(ReplicaLocationSchema, {
      storeId,
      address: rec?.address ?? '',
      health: rec?.health,
      zone: rec?.zone ?? '',
    });
  });
  return { replicas, target: Math.max(g?.members.length ?? 0, extras?.targetReplicaCount ?? 0) };
}

/** Where a blob should be: its holders and target (holdersOf). */
export interface Holders {
  /** v1: whether the directory has the blob's record; placement groups: undefined (no per-blob record). */
  listed?: boolean;
  replicas: ReplicaLocation[];
  /** Replicas the record lists (v1), or the holders (placement groups). */
  recorded: number;
  target: number;
  /** The record's cookie (v1); undefined: reads skip the cookie check. */
  cookie?: bigint;
}

/**
 * Where each blob should be, without asking the stores: one Locate per 500 ids
 * (v1), or the placement map (no RPC per blob). The checks then read every holder
 * once; asking each holder first (locateAll) doubled the RPCs of a full check.
 */
export async function holdersOf(dir: DirectoryClient, ids: string[]): Promise<Map<string, Holders>> {
  const { minIndex, placed } = await latestCommit(dir);
  const out = new Map<string, Holders>();
  if (placed) {
    return withPlacement(dir, minIndex, async (state) => {
      for (const id of ids) {
        const { replicas, target } = placedHolders(state, id);
        out.set(id, { replicas, recorded: replicas.length, target });
      }
      return out;
    });
  }
  for (let i = 0; i < ids.length; i += 500) {
    const res = await dir.locate(ids.slice(i, i + 500), minIndex);
    for (const l of res.locations) {
      out.set(l.blobId, {
        listed: l.found && l.blob !== undefined,
        replicas: l.replicas,
        recorded: l.blob?.replicas.length ?? 0,
        target: l.blob?.targetReplicaCount ?? 0,
        ...(l.blob ? { cookie: l.blob.cookie } : {}),
      });
    }
  }
  return out;
}

/**
 * What stores hold of the blobs' placement groups, listed in bulk
 * (ListPlacementGroup, 1000 needles a page, tombstones included): one listing per
 * (store, group) instead of an RPC per blob — the per-fault check of 10 000 blobs
 * takes a few hundred listings. `everyStore` lists each group on every store (for
 * "a deleted blob is on no store"), else only on the blob's holders. undefined on
 * the v1 layout (no placement groups).
 */
export interface Inventory {
  holders: Map<string, Holders>;
  /** The newest needle (live or tombstone) `storeId` has of `blobId`; undefined: none. */
  facts(storeId: string, blobId: string): NeedleFacts | undefined;
  /** Listed stores: id → address. */
  stores: Map<string, string>;
}

export async function inventory(
  dir: DirectoryClient,
  ids: string[],
  o: { everyStore?: boolean } = {},
): Promise<Inventory | undefined> {
  const { minIndex, placed } = await latestCommit(dir);
  if (!placed) return undefined;
  return withPlacement(dir, minIndex, async (state) => {
    const holders = new Map<string, Holders>();
    const wanted = new Map<string, { storeId: string; address: string; group: number }>();
    const want = (storeId: string, address: string, group: number) =>
      wanted.set(`${storeId}/${group}`, { storeId, address, group });
    const all = [...state.stores.values()];
    for (const id of ids) {
      const { replicas, target } = placedHolders(state, id);
      holders.set(id, { replicas, recorded: replicas.length, target });
      const group = state.placement.groupFor(id)?.group;
      if (group === undefined) continue;
      for (const r of replicas) want(r.storeId, r.address, group);
      if (o.everyStore) for (const st of all) want(st.storeId, st.address, group);
    }
    const groupCount = state.placement.groupCount;
    const byStore = new Map<string, Map<string, NeedleFacts>>();
    const listed = new Map([...wanted.values()].map((j) => [j.storeId, j.address]));
    const jobs = [...wanted.values()];
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(8, jobs.length) }, async () => {
        for (let j = jobs[next++]; j; j = jobs[next++]) {
          const m = byStore.get(j.storeId) ?? new Map<string, NeedleFacts>();
          byStore.set(j.storeId, m);
          let pageToken = '';
          do {
            const page = await store(j.address).listPlacementGroup(
              { groupCount, group: j.group, pageToken, pageSize: 1000, includeDeleted: true },
              { timeoutMs: 30_000 },
            );
            for (const n of page.needles) m.set(n.blobId, n);
            if (page.nextPageToken !== '' && page.nextPageToken === pageToken)
              throw new Error(`${j.storeId} repeated the page token of group ${j.group}`);
            pageToken = page.nextPageToken;
          } while (pageToken !== '');
        }
      }),
    );
    return {
      holders,
      facts: (storeId, blobId) => byStore.get(storeId)?.get(blobId),
      stores: listed,
    };
  });
}

async function locatePlaced(
  dir: DirectoryClient,
  ids: string[],
  minIndex: bigint,
): Promise<Map<string, BlobLocation>> {
  return withPlacement(dir, minIndex, async (state) => {
    const out = new Map<string, BlobLocation>();
    await Promise.all(
      chunks(ids, 16).map(async (part) => {
        for (const id of part) {
          const { replicas, target } = placedHolders(state, id);
          let cookie: bigint | undefined;
          for (const r of replicas) {
            const facts = await store(r.address)
              .stat({ blobId: id }, { timeoutMs: 10_000 })
              // NOT_FOUND, or a damaged copy (DATA_LOSS): ask the next holder.
              .catch(() => undefined);
            if (facts?.needle) {
              cookie = facts.needle.cookie;
              break;
            }
          }
          out.set(
            id,
            create(BlobLocationSchema, {
              blobId: id,
              found: cookie !== undefined,
              replicas,
              ...(cookie !== undefined
                ? {
                    blob: create(BlobMetaSchema, {
                      blobId: id,
                      cookie,
                      targetReplicaCount: target,
                      replicas: replicas.map((r) => ({ storeId: r.storeId, volumeId: 0 })),
                      state: BlobState.ACTIVE,
                    }),
                  }
                : {}),
            }),
          );
        }
      }),
    );
    return out;
  });
}

function chunks<T>(xs: T[], n: number): T[][] {
  const out: T[][] = Array.from({ length: n }, () => []);
  for (const [i, x] of xs.entries()) out[i % n]?.push(x);
  return out;
}
