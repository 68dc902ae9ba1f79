/**
 * The cluster's state in one word, as the dashboard's header and `haystack health`
 * show it (issue 14: "degraded when any store is DOWN or any blob is below target").
 * Browser-safe: generated types only.
 */
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { GetClusterStatusResponse } from '../../gen/haystack/v1/directory_pb.js';
import { type PlacementGroup, PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import type { ReplicationServiceGetStatsResponse } from '../../gen/haystack/v1/replication_pb.js';

export interface ClusterVerdict {
  /**
   * - `unreachable`: no cluster status (no directory answered);
   * - `degraded`: a store DOWN, blobs below their target replica count, placement groups
   *   with fewer ACTIVE members than their size, or no directory leader;
   * - `up`: none of those.
   */
  state: 'up' | 'degraded' | 'unreachable';
  /**
   * What makes it degraded, for a person: "1 store DOWN (store-2)", "3 blobs below target",
   * "8 placement groups below size (being rebuilt)".
   */
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
  const short = cluster.placementGroups.filter(belowSize).length;
  const problems = [
    ...(down.length ? [`${down.length} store${down.length > 1 ? 's' : ''} DOWN (${down.join(', ')})`] : []),
    ...(below ? [`${below} blob${below > 1 ? 's' : ''} below target`] : []),
    ...(short ? [`${short} placement group${short > 1 ? 's' : ''} below size (being rebuilt)`] : []),
    ...(cluster.leaderId ? [] : ['no directory leader']),
  ];
  return { state: problems.length ? 'degraded' : 'up', problems };
}

/**
 * A group holds its blobs on fewer stores than its size: fewer ACTIVE members (which hold
 * every needle) than members not leaving. A balance move (an ACTIVE leaving member and a
 * JOINING replacement) is not below size; a member reset to JOINING after its store went
 * DOWN (the blobs' placement-mode shortfall) is.
 */
function belowSize(g: PlacementGroup): boolean {
  const active = g.members.filter((m) => m.state === PlacementMemberState.ACTIVE).length;
  const staying = g.members.filter((m) => !m.leaving).length;
  return active < staying;
}

/** The verdict as one line: "cluster up", "degraded: …" or "directory unreachable". */
export function verdictText(v: ClusterVerdict): string {
  if (v.state === 'up') return 'cluster up';
  if (v.state === 'unreachable') return 'directory unreachable';
  return `degraded: ${v.problems.join(' · ')}`;
}
