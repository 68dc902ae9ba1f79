import { create } from '@bufbuild/protobuf';
import { type TierBytes, TierBytesSchema } from '../../gen/haystack/v1/directory_pb.js';
import type { PlacementGroup, StoreRecord } from '../../gen/haystack/v1/metadata_pb.js';

/**
 * Bytes per tier and the effective replication factor (GetClusterStatus.tier_bytes),
 * from the stores' last heartbeats (pure):
 *
 * - replica bytes, **measured** when every store holding needles reported its
 *   live needle bytes per placement group (StoreRecord.placement_bytes, numbered
 *   by the cluster's `groupCount`): stored = the sum of those bytes (full needles
 *   and cold stubs; tombstones excluded); logical = over the groups, the group's
 *   largest single copy (the most bytes of the group any one store holds — a
 *   member's, unless every member lost some). A store's bytes of a group it is
 *   not a member of are extra: hot blobs' extra replicas (or what a store that
 *   left the group still holds); they count as stored bytes only, so a hot blob
 *   with 2 extra copies raises the factor above the group size. Stubs count like
 *   any needle: each member's copy stored, one copy logical (their blob's bytes
 *   are the shard tier's logical bytes).
 * - replica bytes, **estimated** otherwise (no placement groups, or a store that
 *   has not reported its groups yet): live needle bytes on every store over
 *   `replicas` — exactly `replicas` whatever the extra replicas.
 * - shard bytes: every shard on every store; logical: the data shards' bytes. A
 *   shard with index i on store s is a data shard when i < k of a group whose
 *   ec_members[i] is s (PlacementGroup.ec_data_shards); shards on stores no group
 *   lists at that index (orphans, a drain's old copies) take the k most groups use.
 *   With no k known at all, shard logical bytes are 0 (and so is its factor).
 *
 * Effective replication = stored / logical. One stripe's shards are all the same
 * size, so data bytes / all bytes is k / (k + m) for each code.
 */
export function tierBytes(
  stores: readonly StoreRecord[],
  groups: readonly (PlacementGroup | undefined)[],
  replicas: number,
  groupCount = 0,
): TierBytes {
  const r = measuredReplicas(stores, groups, groupCount) ?? estimatedReplicas(stores, replicas);
  const s = shardTier(stores, groups);
  const ratio = (a: bigint, b: bigint) => (b > 0n ? Number(a) / Number(b) : 0);
  return create(TierBytesSchema, {
    replicaBytes: r.bytes,
    shardBytes: s.bytes,
    replicaLogicalBytes: r.logical,
    shardLogicalBytes: s.logical,
    replicaExtraBytes: r.extra,
    replicaMeasured: r.measured,
    effectiveReplication: ratio(r.bytes + s.bytes, r.logical + s.logical),
    replicaReplication: ratio(r.bytes, r.logical),
    shardReplication: ratio(s.bytes, s.logical),
  });
}

interface Tier {
  bytes: bigint;
  logical: bigint;
}

interface ReplicaTier extends Tier {
  extra: bigint;
  measured: boolean;
}

const liveBytes = (s: StoreRecord) => s.volumes.reduce((n, v) => n + v.liveBytes, 0n);

/** Undefined unless every store holding needles reported them per group of `groupCount`. */
function measuredReplicas(
  stores: readonly StoreRecord[],
  groups: readonly (PlacementGroup | undefined)[],
  groupCount: number,
): ReplicaTier | undefined {
  if (groupCount === 0) return undefined;
  for (const s of stores) {
    if (s.placementBytes?.groupCount !== groupCount && liveBytes(s) > 0n) return undefined;
  }
  const members = new Map<number, Set<string>>();
  for (const g of groups) if (g) members.set(g.group, new Set(g.members.map((m) => m.storeId)));
  const copy = new Map<number, bigint>();
  let bytes = 0n;
  let extra = 0n;
  for (const s of stores) {
    if (s.placementBytes?.groupCount !== groupCount) continue;
    for (const { group, bytes: b } of s.placementBytes.groups) {
      bytes += b;
      if (!members.get(group)?.has(s.storeId)) extra += b;
      if (b > (copy.get(group) ?? 0n)) copy.set(group, b);
    }
  }
  let logical = 0n;
  for (const b of copy.values()) logical += b;
  return { bytes, logical, extra, measured: true };
}

function estimatedReplicas(stores: readonly StoreRecord[], replicas: number): ReplicaTier {
  let bytes = 0n;
  for (const s of stores) bytes += liveBytes(s);
  const logical = replicas > 0 ? bytes / BigInt(replicas) : 0n;
  return { bytes, logical, extra: 0n, measured: false };
}

function shardTier(stores: readonly StoreRecord[], groups: readonly (PlacementGroup | undefined)[]): Tier {
  let bytes = 0n;
  let logical = 0n;
  // (store, index) → k of the groups listing it there; the cluster's most used k.
  const kAt = new Map<string, number>();
  const kVotes = new Map<number, number>();
  for (const g of groups) {
    if (!g || g.ecDataShards === 0) continue;
    kVotes.set(g.ecDataShards, (kVotes.get(g.ecDataShards) ?? 0) + 1);
    for (const [i, m] of g.ecMembers.entries()) kAt.set(`${m.storeId}\u0000${i}`, g.ecDataShards);
  }
  const commonK = [...kVotes].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0]?.[0];
  for (const s of stores) {
    if (!s.shards) continue;
    bytes += s.shards.bytes;
    for (const [i, b] of s.shards.bytesByIndex.entries()) {
      const k = kAt.get(`${s.storeId}\u0000${i}`) ?? commonK;
      if (k !== undefined && i < k) logical += b;
    }
  }
  return { bytes, logical };
}
