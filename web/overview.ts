/**
 * The overview: directories, stores, replication and cache, the header's cluster
 * state (up / degraded / unreachable), and charts. Figures come from the public
 * status calls through Envoy, polled every 2 s; rates are differences between
 * polls, latencies are what this page measures.
 */
import { StoreHealth } from '../gen/haystack/v1/common_pb.js';
import { DirectoryRole, type GetClusterStatusResponse } from '../gen/haystack/v1/directory_pb.js';
import type { ReplicationServiceGetStatsResponse } from '../gen/haystack/v1/replication_pb.js';
import type { GatewayStats, HaystackClient } from '../internal/sdk/browser.js';
import { clusterVerdict, verdictText } from '../internal/sdk/cluster-verdict.js';
import { ChartCard, History } from './charts.js';
import { $, dl, el, human, STATUS_TIMEOUT_MS, tag } from './dom.js';

export interface ClusterView {
  cluster?: GetClusterStatusResponse;
  replication?: ReplicationServiceGetStatsResponse;
  cache?: GatewayStats;
}

const HEALTH_COLOR: Record<string, string> = {
  HEALTHY: '#16a34a',
  DEGRADED: '#d97706',
  DOWN: '#dc2626',
  UNSPECIFIED: '#9ca3af',
};

export class Overview {
  /** The latest answers (the blob view reads store health from it). */
  readonly latest: ClusterView = {};
  private readonly history = new History();
  private prev: { at: number; lookups: number; hits: number; blobs: number } | undefined;
  private readonly charts: Record<
    'throughput' | 'latency' | 'hitRate' | 'replicas' | 'heat' | 'fill' | 'tiers',
    ChartCard
  >;

  constructor(
    private readonly client: HaystackClient,
    private readonly onBlob: (id: string) => void,
  ) {
    this.charts = {
      throughput: new ChartCard($('#chart-throughput'), 'line'),
      latency: new ChartCard($('#chart-latency'), 'line', { unit: ' ms' }),
      hitRate: new ChartCard($('#chart-hit-rate'), 'line', { unit: '%', max: 100 }),
      replicas: new ChartCard($('#chart-replicas'), 'bar'),
      heat: new ChartCard($('#chart-heat'), 'bar', { horizontal: true }),
      fill: new ChartCard($('#chart-fill'), 'bar', { horizontal: true, unit: '%', max: 100 }),
      tiers: new ChartCard($('#chart-tiers'), 'bar', { horizontal: true, legend: true }),
    };
    this.charts.heat.chart.options.onClick = (_e, items) => {
      const i = items[0]?.index;
      const id = i === undefined ? undefined : this.latest.replication?.hotBlobs[i]?.blobId;
      if (id) this.onBlob(id);
    };
  }

  /** One poll: status calls, a timed read of the newest blob, then every panel. */
  async refresh(newestBlob: string | undefined): Promise<void> {
    const timed = async <T>(p: Promise<T>): Promise<[T, number]> => {
      const t0 = performance.now();
      const v = await p;
      return [v, performance.now() - t0];
    };
    const [cluster, replication, cache, read] = await Promise.allSettled([
      timed(this.client.clusterStatus({ timeoutMs: STATUS_TIMEOUT_MS })),
      this.client.replicationStats({ timeoutMs: STATUS_TIMEOUT_MS }),
      this.client.gatewayStats({ timeoutMs: STATUS_TIMEOUT_MS }),
      newestBlob
        ? timed(
            fetch(`/blobs/${encodeURIComponent(newestBlob)}`, {
              method: 'HEAD',
              cache: 'no-store',
              headers: this.client.authHeaders(),
            }),
          )
        : Promise.reject(new Error('no blob yet')),
    ]);
    this.latest.cluster = cluster.status === 'fulfilled' ? cluster.value[0] : undefined;
    this.latest.replication = replication.status === 'fulfilled' ? replication.value : undefined;
    if (cache.status === 'fulfilled') this.latest.cache = cache.value;
    this.header();
    $('#updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (this.latest.cluster) this.clusterPanels(this.latest.cluster);
    this.replicationPanel();
    this.cachePanel();
    this.sample(
      cluster.status === 'fulfilled' ? cluster.value[1] : Number.NaN,
      read.status === 'fulfilled' && read.value[0].ok ? read.value[1] : Number.NaN,
    );
  }

  /** "cluster up", "degraded: …" (a store DOWN or blobs below target) or "directory unreachable". */
  private header(): void {
    const conn = $('#conn');
    const v = clusterVerdict(this.latest.cluster, this.latest.replication);
    conn.textContent = verdictText(v);
    conn.className = `pill ${v.state === 'up' ? 'ok' : v.state === 'degraded' ? 'warn' : 'bad'}`;
    document.body.dataset.state = v.state;
  }

  private clusterPanels(c: GetClusterStatusResponse): void {
    // Placement mode: the directory maps groups, not blobs (it has no blob count).
    const what =
      c.placementGroupCount > 0
        ? `${c.placementGroupCount} placement groups · ${c.extraReplicaBlobs} hot blobs with extra replicas`
        : `${c.blobCount} blobs`;
    $('#dir-summary').textContent = `leader ${c.leaderId || 'none'} · term ${c.term} · ${what}`;
    $('#directories tbody').replaceChildren(
      ...[...c.directories]
        .sort((a, b) => a.directoryId.localeCompare(b.directoryId))
        .map((d) =>
          el(
            'tr',
            {},
            el('td', {}, d.directoryId),
            el('td', {}, d.address),
            el('td', {}, tag('role', d.reachable ? (DirectoryRole[d.role] ?? '?') : 'UNSPECIFIED')),
            el('td', {}, String(d.term)),
            el('td', {}, String(d.commitIndex)),
          ),
        ),
    );
    const stores = [...c.stores].sort((a, b) => a.storeId.localeCompare(b.storeId));
    const loads = new Map(c.storeLoads.map((l) => [l.storeId, l]));
    $('#stores tbody').replaceChildren(
      ...stores.map((s) => {
        // Placement share and drain progress (`haystack drain`, `haystack balance`).
        const l = loads.get(s.storeId);
        const drain = l?.drained ? 'DRAINED' : l?.draining ? 'DRAINING' : '';
        return el(
          'tr',
          {},
          el('td', {}, s.storeId),
          el('td', {}, s.address),
          el('td', {}, tag('health', StoreHealth[s.health] ?? '?')),
          el(
            'td',
            { className: 'muted' },
            `${human(Number(s.freeBytes))} free of ${human(Number(s.capacityBytes))}`,
          ),
          el(
            'td',
            { className: 'muted' },
            ...(l
              ? [
                  `${l.memberships} groups${l.leaving ? `, ${l.leaving} leaving` : ''}` +
                    (l.ecMemberships || l.shards ? ` · ${l.ecMemberships} EC, ${l.shards} shards` : ''),
                ]
              : []),
            ...(drain ? [' ', tag('drain', drain)] : []),
          ),
        );
      }),
    );
    const fill = stores.map((s) => {
      const cap = Number(s.capacityBytes);
      return cap ? Math.round(((cap - Number(s.freeBytes)) / cap) * 1000) / 10 : 0;
    });
    this.charts.fill.set(
      stores.map((s) => s.storeId),
      [
        {
          label: 'disk used',
          values: fill,
          colors: stores.map((s) => HEALTH_COLOR[StoreHealth[s.health] ?? 'UNSPECIFIED'] ?? '#9ca3af'),
        },
      ],
    );
    this.tiers(c);
    // Per-blob mode: every blob by replica count. Placement mode: the groups by
    // member count, and the blobs by replica count as the directory estimates them
    // (every blob at its group's size, hot blobs raised by their extra replicas).
    const blobs = new Map(c.replicaHistogram.map((b) => [b.replicas, Number(b.blobs)]));
    const groups = new Map<number, number>();
    for (const g of c.placementGroups) groups.set(g.members.length, (groups.get(g.members.length) ?? 0) + 1);
    const counts = [...new Set([...blobs.keys(), ...groups.keys()])].sort((a, b) => a - b);
    const placement = c.placementGroupCount > 0;
    this.charts.replicas.set(
      counts.map((n) => `${n} replica${n === 1 ? '' : 's'}`),
      [
        ...(placement ? [{ label: 'placement groups', values: counts.map((n) => groups.get(n) ?? 0) }] : []),
        {
          label: placement ? 'blobs (estimated)' : 'blobs',
          values: counts.map((n) => blobs.get(n) ?? 0),
        },
      ],
    );
  }

  /** Bytes per tier, stored and logical, and the effective replication factor (stored / logical). */
  private tiers(c: GetClusterStatusResponse): void {
    const t = c.tierBytes;
    if (!t) return;
    const mib = (b: bigint) => Math.round((Number(b) / 1048576) * 100) / 100;
    const x = (f: number) => (f > 0 ? `${f.toFixed(2)}×` : '–');
    this.charts.tiers.set(
      [`hot replicas (${x(t.replicaReplication)})`, `cold shards (${x(t.shardReplication)})`],
      [
        { label: 'stored', values: [mib(t.replicaBytes), mib(t.shardBytes)] },
        { label: 'logical', values: [mib(t.replicaLogicalBytes), mib(t.shardLogicalBytes)] },
      ],
    );
    // Measured from the stores' bytes per placement group (hot blobs' extra replicas
    // included); until every store has reported them, the replica factor is the group size.
    $('#tiers-summary').textContent =
      `— effective replication ${x(t.effectiveReplication)}` +
      (t.replicaMeasured
        ? `, extra replicas of hot blobs ${mib(t.replicaExtraBytes)} MiB`
        : ' (replica factor estimated)');
  }

  private replicationPanel(): void {
    const r = this.latest.replication;
    if (!r) {
      dl($('#replication'), [['manager', 'unreachable']]);
      return;
    }
    const queued = r.queue.reduce((n, q) => n + Number(q.depth), 0);
    dl($('#replication'), [
      ['manager', `${r.managerId}${r.active ? ' (active)' : ''}`],
      ['queue', String(queued)],
      ['in flight', String(r.inFlight)],
      ['completed', String(r.completed)],
      ['failed', String(r.failed)],
      ['below target', String(r.blobsBelowTarget)],
    ]);
    const hot = r.hotBlobs.slice(0, 10);
    this.charts.heat.set(
      hot.map((h) => `${h.blobId.slice(0, 10)} (${h.replicaCount}/${h.targetReplicaCount})`),
      [{ label: 'reads/min', values: hot.map((h) => Math.round(h.ratePerMinute * 10) / 10) }],
    );
    $('#heat-empty').hidden = hot.length > 0;
  }

  private cachePanel(): void {
    const g = this.latest.cache;
    if (!g) return;
    $('#hit-rate').textContent = `${(g.cluster.hitRate * 100).toFixed(1)}%`;
    dl($('#cache'), [
      ['backend', `${g.cacheBackend}${g.cacheAvailable ? '' : ' (unavailable)'}`],
      ['hits', String(g.cluster.hits)],
      ['misses', String(g.cluster.misses)],
      ['max blob', human(g.cacheMaxBlobSize)],
      ['max upload', human(g.maxUploadSize)],
    ]);
  }

  /** Adds one point to the line charts: rates since the previous poll, latencies of this one. */
  private sample(statusMs: number, readMs: number): void {
    const now = performance.now();
    const g = this.latest.cache;
    const c = this.latest.cluster;
    const cur = {
      at: now,
      lookups: g ? g.cluster.hits + g.cluster.misses : Number.NaN,
      hits: g ? g.cluster.hits : Number.NaN,
      blobs: c ? Number(c.blobCount) : Number.NaN,
    };
    const p = this.prev;
    this.prev = cur;
    if (!p) return;
    const dt = (now - p.at) / 1000;
    const lookups = cur.lookups - p.lookups;
    this.history.push(new Date(), {
      'reads/s (cache lookups)': Math.max(0, lookups / dt),
      'new blobs/s': Math.max(0, (cur.blobs - p.blobs) / dt),
      'status call': Math.round(statusMs),
      'blob read (HEAD)': Math.round(readMs),
      'hit rate (window)': lookups > 0 ? Math.round(((cur.hits - p.hits) / lookups) * 1000) / 10 : Number.NaN,
      'hit rate (since start)': g ? Math.round(g.cluster.hitRate * 1000) / 10 : Number.NaN,
    });
    const h = this.history;
    this.charts.throughput.set(h.labels, h.series('reads/s (cache lookups)', 'new blobs/s'));
    this.charts.latency.set(h.labels, h.series('status call', 'blob read (HEAD)'));
    this.charts.hitRate.set(h.labels, h.series('hit rate (window)', 'hit rate (since start)'));
  }
}
