/** One hot blob: reads per minute now. */
export interface HotBlob {
  blobId: string;
  ratePerMinute: number;
}

/**
 * Hot blobs: read at least ACCESS_RATE_THRESHOLD times a minute (the rate at which the policy
 * raises a blob's target), or still holding a committed target above the default (cooling,
 * within the grace period); hottest first, ties by blob id. The one definition behind
 * haystack_replication_hot_blobs and the hot list of GetStats (the CLI's and the dashboard's
 * "Hot blobs"): a blob read 0.3 times a minute at the default target is in neither. Pure.
 *
 * `reading` lists the blobs at or above the threshold (HeatTracker.hottest); `watched` the
 * raised or cooling ones, `targetOf` their committed target and `rateOf` their rate.
 */
export function hotBlobList(
  reading: readonly HotBlob[],
  watched: Iterable<string>,
  targetOf: (blobId: string) => number,
  rateOf: (blobId: string) => number,
  defaultReplicaCount: number,
): HotBlob[] {
  const hot = [...reading];
  const seen = new Set(hot.map((h) => h.blobId));
  for (const id of watched) {
    if (seen.has(id) || targetOf(id) <= defaultReplicaCount) continue;
    hot.push({ blobId: id, ratePerMinute: rateOf(id) });
  }
  return hot.sort((a, b) => b.ratePerMinute - a.ratePerMinute || (a.blobId < b.blobId ? -1 : 1));
}
