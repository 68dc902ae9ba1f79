/**
 * The cluster's state in one word, as the dashboard's header and `haystack health`
 * show it (issue 14: "degraded when any store is DOWN or any blob is below target").
 * Browser-safe: generated types only.
 */
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { GetClusterStatusResponse } from '../../gen/haystack/v1/directory_pb.js';
import type { ReplicationServiceGetStatsResponse } from '../../gen/haystack/v1/replication_pb.js';

export interface ClusterVerdict {
  /**
   * - `unreachable`: no cluster status (no directory answered);
   * - `degraded`: a store DOWN, blobs below their target replica count, or no directory leader;
   * - `up`: none of those.
   */
  state: 'up' | 'degraded' | 'unreachable';
  /** What makes it degraded, for a person: "1 store DOWN (store-2)", "3 blobs below target". */
  problems: string[];
}

/**
 * Judges the cluster from the directory's status and the replication manager's stats.
 * Without replication stats (the manager did not answer) blobs below target are not
 * known and not counted; the store and leader checks still apply.
 */
export function clusterVerdict(
  cluster: GetClusterStatusResponse | undefined,
  replication: ReplicationServiceGetStatsResponse | undefined,
): ClusterVerdict {
  if (!cluster) return { state: 'unreachable', problems: ['directory unreachable'] };
  const down = cluster.stores.filter((s) => s.health === StoreHealth.DOWN).map((s) => s.storeId);
  const below = Number(replication?.blobsBelowTarget ?? 0n);
  const problems = [
    ...(down.length ? [`${down.length} store${down.length > 1 ? 's' : ''} DOWN (${down.join(', ')})`] : []),
    ...(below ? [`${below} blob${below > 1 ? 's' : ''} below target`] : []),
    ...(cluster.leaderId ? [] : ['no directory leader']),
  ];
  return { state: problems.length ? 'degraded' : 'up', problems };
}

/** The verdict as one line: "cluster up", "degraded: …" or "directory unreachable". */
export function verdictText(v: ClusterVerdict): string {
  if (v.state === 'up') return 'cluster up';
  if (v.state === 'unreachable') return 'directory unreachable';
  return `degraded: ${v.problems.join(' · ')}`;
}
