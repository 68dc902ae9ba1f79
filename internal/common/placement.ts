import { hashKey64 } from './key-hash.js';

/**
 * Placement: which placement group a blob id belongs to. Every component (gateway,
 * store, replication manager, directory, SDK tools) computes it the same way, so a
 * blob is found without asking anyone: this function is part of the on-disk and
 * wire contract and must never change for an existing cluster.
 *
 *   group = (high 32 bits of hashKey64(id)) mod groupCount
 *
 * The high half is used because the needle map buckets by the low half; the two
 * are independent, so a group's needles spread over every bucket. The group count
 * is fixed when the cluster's placement is first created (PlacementChanged).
 * Same idea as Ceph's placement groups (object hash mod pg_num, Weil et al., OSDI
 * 2006) and Ambry's partitions; unlike Haystack's logical volume ids it works for
 * ids the client chooses.
 */

/** Largest placement group count a cluster may have. */
export const MAX_PLACEMENT_GROUPS = 65_536;

const scratch = new Uint32Array(2);

/** The placement group of `blobId` among `groupCount` groups (1..MAX_PLACEMENT_GROUPS). */
export function placementGroupOf(blobId: string, groupCount: number): number {
  hashKey64(blobId, scratch);
  return groupOfHash(scratch[1] as number, groupCount);
}

/** The placement group of an id whose hashKey64 high half is `hashHigh` (as the needle map keeps it). */
export function groupOfHash(hashHigh: number, groupCount: number): number {
  return (hashHigh >>> 0) % groupCount;
}

/** Problem with a group count from config or the wire, or undefined when valid. */
export function checkGroupCount(n: number): string | undefined {
  if (!Number.isInteger(n) || n < 1 || n > MAX_PLACEMENT_GROUPS) {
    return `placement group count ${n} is outside 1..${MAX_PLACEMENT_GROUPS}`;
  }
  return undefined;
}
