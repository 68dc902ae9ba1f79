import { Counter, Gauge, Histogram } from 'prom-client';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { DirectoryRole } from '../../gen/haystack/v1/directory_pb.js';
import type { Metrics } from '../server/metrics.js';
import type { DirectoryNode } from './node.js';
import type { StoreRegistry } from './stores.js';

/** Directory metrics on the process's registry. */
export class DirectoryMetrics {
  readonly commits: Counter;
  readonly commitSeconds: Histogram;
  readonly leaderChanges: Counter;

  constructor(
    metrics: Metrics,
    node: () => DirectoryNode | undefined,
    stores: () => StoreRegistry | undefined,
  ) {
    const registers = [metrics.registry];
    this.commits = new Counter({
      name: 'haystack_directory_commits_total',
      help: 'Changes committed (a majority of directory instances has them on disk) by this instance as leader',
      registers,
    });
    this.commitSeconds = new Histogram({
      name: 'haystack_directory_commit_duration_seconds',
      help: 'Time from appending a change to its majority commit, on the leader',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.leaderChanges = new Counter({
      name: 'haystack_directory_leader_terms_total',
      help: 'Times this instance took office as leader',
      registers,
    });
    new Gauge({
      name: 'haystack_directory_role',
      help: 'Role of this instance: 1 for the current role (leader, follower, candidate)',
      labelNames: ['role'],
      registers,
      collect() {
        const n = node();
        const r = n?.directoryRole() ?? DirectoryRole.CANDIDATE;
        for (const [name, v] of [
          ['leader', DirectoryRole.LEADER],
          ['follower', DirectoryRole.FOLLOWER],
          ['candidate', DirectoryRole.CANDIDATE],
        ] as const) {
          this.set({ role: name }, r === v ? 1 : 0);
        }
      },
    });
    new Gauge({
      name: 'haystack_directory_term',
      help: 'Highest leader term this instance knows',
      registers,
      collect() {
        this.set(Number(node()?.currentTerm() ?? 0n));
      },
    });
    new Gauge({
      name: 'haystack_directory_log_index',
      help: 'Metadata log positions: last (appended), durable (fsync), commit, applied',
      labelNames: ['kind'],
      registers,
      collect() {
        const n = node();
        if (!n) return;
        this.set({ kind: 'last' }, Number(n.store.lastIndex));
        this.set({ kind: 'durable' }, Number(n.store.durableIndex));
        this.set({ kind: 'commit' }, Number(n.commitIndex));
        this.set({ kind: 'applied' }, Number(n.state.appliedIndex));
      },
    });
    new Gauge({
      name: 'haystack_directory_blobs',
      help: 'Live blobs',
      registers,
      collect() {
        this.set(node()?.state.liveBlobs ?? 0);
      },
    });
    new Gauge({
      name: 'haystack_directory_stores',
      help: 'Registered stores by health (as the leader sees it; from the log on followers)',
      labelNames: ['health'],
      registers,
      collect() {
        const n = node();
        const s = stores();
        const counts = new Map<StoreHealth, number>([
          [StoreHealth.HEALTHY, 0],
          [StoreHealth.DEGRADED, 0],
          [StoreHealth.DOWN, 0],
          [StoreHealth.UNSPECIFIED, 0],
        ]);
        if (n) {
          for (const id of n.state.stores.keys()) {
            const h = s && n.isServingLeader() ? s.currentHealth(id) : n.state.storeHealth(id);
            counts.set(h, (counts.get(h) ?? 0) + 1);
          }
        }
        for (const [h, c] of counts) this.set({ health: (StoreHealth[h] ?? 'UNSPECIFIED').toLowerCase() }, c);
      },
    });
    new Gauge({
      name: 'haystack_directory_pending_tombstones',
      help: 'Tombstones not yet confirmed by their store',
      registers,
      collect() {
        let c = 0;
        for (const set of node()?.state.tombstones.values() ?? []) c += set.size;
        this.set(c);
      },
    });
  }
}
