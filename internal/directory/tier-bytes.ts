import { create } from '@bufbuild/protobuf';
import { type TierBytes, TierBytesSchema } from '../../gen/haystack/v1/directory_pb.js';
import type { PlacementGroup, StoreRecord } from '../../gen/haystack/v1/metadata_pb.js';

/**
 * Bytes per tier and the effective replication factor (GetClusterStatus.tier_bytes),
 * from the stores' last heartbeats (pure):
 *
 * - replica bytes: live needle bytes on every store (full replicas, extra replicas
 *   of hot blobs, and the cold tier's small stubs); logical: over `replicas` (each
 *   placement group holds every needle on each of its members);
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
): TierBytes {
  let replicaBytes = 0n;
  let shardBytes = 0n;
  let shardLogical = 0n;
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
    for (const v of s.volumes) replicaBytes += v.liveBytes;
    if (!s.shards) continue;
    shardBytes += s.shards.bytes;
    for (const [i, b] of s.shards.bytesByIndex.entries()) {
      const k = kAt.get(`${s.storeId}\u0000${i}`) ?? commonK;
      if (k !== undefined && i < k) shardLogical += b;
    }
  }
  const replicaLogical = replicas > 0 ? replicaBytes / BigInt(replicas) : 0n;
  const ratio = (a: bigint, b: bigint) => (b > 0n ? Number(a) / Number(b) : 0);
  return create(TierBytesSchema, {
    replicaBytes,
    shardBytes,
    replicaLogicalBytes: replicaLogical,
    shardLogicalBytes: shardLogical,
    effectiveReplication: ratio(replicaBytes + shardBytes, replicaLogical + shardLogical),
    replicaReplication: ratio(replicaBytes, replicaLogical),
    shardReplication: ratio(shardBytes, shardLogical),
  });
}
