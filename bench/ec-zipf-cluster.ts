// npm run bench:ec-zipf — the effective replication factor of a Zipf read workload
// measured on a running cluster (issue 16), next to bench/ec-zipf.ts's model:
// a directory with placement groups, six stores, the replication manager with the
// cold tier on (RS(4,2)), a gateway behind Envoy. --blobs blobs of --size bytes are
// uploaded, then read through Envoy with the SDK at --rate reads/s, blob i+1 with
// probability ∝ 1/(i+1) (Zipf, s = 1), for --duration seconds. Blobs nobody reads
// for EC_COLD_AFTER cool into the erasure-coded tier, the head stays replicated and
// the hottest gain replicas. At the end, with the reads still running, every blob's
// tier and replica count (Stat) and the directory's bytes per tier are read back:
//   effective replication = bytes on all stores / logical bytes uploaded,
// overall, for the cold blobs (shard bytes / their logical bytes) and for the rest.
// Goal (issue 16): ≤ 1.6× for cold data; 3× or more only for blobs hot enough.
//
// Flags: --blobs (1000), --size bytes (32768), --rate reads/s (20), --duration s (300),
// --out (bench/results).

import os from 'node:os';
import { parseArgs } from 'node:util';
import { createClient } from '@connectrpc/connect';
import { BlobService, StorageTier } from '../gen/haystack/v1/blob_pb.js';
import { HaystackClient } from '../internal/sdk/index.js';
import { Cluster } from '../test/helpers/cluster.js';
import { coldTierEnv } from '../test/helpers/cold-tier-env.js';
import { bytes } from '../test/helpers/store-client.js';
import { testToken } from '../test/helpers/tokens.js';
import { zipfModel } from './ec-zipf.js';
import { machine } from './report.js';
import { loadAverageLine, writeRunFiles } from './run-files.js';

const { values: flags } = parseArgs({
  options: {
    blobs: { type: 'string', default: '1000' },
    size: { type: 'string', default: '32768' },
    rate: { type: 'string', default: '20' },
    duration: { type: 'string', default: '300' },
    out: { type: 'string', default: 'bench/results' },
  },
});
const N = Number(flags.blobs);
const SIZE = Number(flags.size);
const RATE = Number(flags.rate);
const DURATION_MS = 1000 * Number(flags.duration);
for (const [k, v] of Object.entries({ blobs: N, size: SIZE, rate: RATE, duration: DURATION_MS })) {
  if (!Number.isFinite(v) || v <= 0) throw new Error(`bad --${k}: ${flags[k as keyof typeof flags]}`);
}
const K = 4;
const M = 2;
const GROUPS = 8;
const COLD_RATE_PER_MIN = 1;

const startMachine = machine();
const loadBefore = os.loadavg();
const settings = coldTierEnv(
  { k: K, m: M, groups: GROUPS },
  {
    EC_COLD_RATE: String(COLD_RATE_PER_MIN),
    EC_COLD_AFTER: '20s',
    EC_WARM_RATE: '120',
    EC_SWEEP_INTERVAL: '1s',
    EWMA_PERIOD: '5s',
    EWMA_ALPHA: '0.3',
    // The replica policy as the model has it: 4 replicas from 60 reads/min, 5 from 150.
    ACCESS_RATE_THRESHOLD: '60',
    HIGH_ACCESS_THRESHOLD: '150',
    COOL_DOWN_THRESHOLD: '30',
  },
);
// The gateways verify tokens of the test key: the SDK carries an admin one.
process.env.HAYSTACK_TOKEN ??= await testToken('admin', { ttlSec: 86_400 });
const cluster = await Cluster.start({
  directories: 1,
  stores: K + M,
  gateways: 1,
  env: { PLACEMENT_GROUPS: String(GROUPS), LOG_LEVEL: 'warn' },
  // Every read reaches a store (and is counted as heat there and at the gateway).
  gatewayEnv: { CACHE_MAX_BLOB_SIZE: '0' },
  // Reads served by stores are heat too, as in deploy/.
  storeHeat: true,
  replicationEnv: settings,
});
const ids = Array.from({ length: N }, (_, i) => `zipf-${i}`);
/** The directory's bytes per tier (a call may time out on a loaded machine: retried). */
async function tierBytes() {
  for (let attempt = 1; ; attempt++) {
    try {
      return (await cluster.status()).tierBytes;
    } catch (err) {
      if (attempt >= 5) throw err;
      await new Promise((r) => setTimeout(r, 2_000));
    }
  }
}
try {
  const client = new HaystackClient({ url: cluster.url });
  const blobs = createClient(BlobService, cluster.transport(cluster.gateways[0]!.address, 'gateway'));
  for (let i = 0; i < N; i += 16) {
    await Promise.all(ids.slice(i, i + 16).map((id, j) => client.upload(bytes(SIZE, i + j + 1), { id })));
  }
  console.log(`uploaded ${N} × ${SIZE} B; reading at ${RATE}/s for ${DURATION_MS / 1000} s`);

  // Zipf(s = 1) by inverse CDF over the harmonic partial sums.
  const cdf: number[] = [];
  let h = 0;
  for (let r = 1; r <= N; r++) {
    h += 1 / r;
    cdf.push(h);
  }
  const pick = () => {
    const u = Math.random() * h;
    let lo = 0;
    let hi = N - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid]! < u) lo = mid + 1;
      else hi = mid;
    }
    return ids[lo]!;
  };
  let reading = true;
  let reads = 0;
  let failed = 0;
  const inFlight = new Set<Promise<void>>();
  const reader = (async () => {
    const started = Date.now();
    while (reading) {
      const due = started + (reads * 1000) / RATE;
      if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
      reads++;
      const read = client.download(pick()).then(
        () => {},
        () => {
          failed++;
        },
      );
      inFlight.add(read);
      void read.finally(() => inFlight.delete(read));
    }
  })();
  const deadline = Date.now() + DURATION_MS;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 15_000));
    const t = await tierBytes().catch((err: unknown) => console.log(`status: ${String(err)}`));
    if (!t) continue;
    console.log(
      `${Math.round((DURATION_MS - (deadline - Date.now())) / 1000)} s: replicas ${t?.replicaBytes} B, shards ${t?.shardBytes} B, effective ${t?.effectiveReplication.toFixed(2)}×`,
    );
  }

  // Every blob's tier and replica count, then the bytes, with the reads still on.
  let cold = 0;
  let hot = 0;
  let warm = 0;
  const replicaCounts = new Map<number, number>();
  for (const id of ids) {
    const b = (await blobs.stat({ blobId: id }, { timeoutMs: 30_000 })).blob;
    if (b?.tier === StorageTier.ERASURE_CODED) cold++;
    else {
      const n = b?.replicaCount ?? 0;
      replicaCounts.set(n, (replicaCounts.get(n) ?? 0) + 1);
      if (n > 3) hot++;
      else warm++;
    }
  }
  const t = await tierBytes();
  reading = false;
  await reader;
  // Every read started is counted, failed or not, before the report.
  await Promise.allSettled([...inFlight]);
  if (!t) throw new Error('GetClusterStatus carried no tier_bytes');
  const logical = N * SIZE;
  const overall = Number(t.replicaBytes + t.shardBytes) / logical;
  const coldFactor = cold > 0 ? Number(t.shardBytes) / (cold * SIZE) : 0;
  // replica_bytes also holds every cold blob's stubs: the replicated blobs' factor is their replica count.
  const meanReplicas = cold < N ? [...replicaCounts].reduce((sum, [n, c]) => sum + n * c, 0) / (N - cold) : 0;
  const model = zipfModel(N, RATE * 60, { k: K, m: M }, 1, COLD_RATE_PER_MIN);
  const x = (v: number) => `${v.toFixed(2)}×`;
  const md = [
    `# Cold tier on a running cluster: effective replication of a Zipf workload — ${new Date().toISOString()}`,
    '',
    `Command: \`npm run bench:ec-zipf -- --blobs ${N} --size ${SIZE} --rate ${RATE} --duration ${DURATION_MS / 1000}\``,
    '',
    `Machine: ${startMachine.cpus} × ${startMachine.cpuModel}, ${startMachine.memoryGiB} GiB; ${loadAverageLine(loadBefore)}.`,
    '',
    `Cluster: 1 directory, ${K + M} stores, ${GROUPS} placement groups of 3, the replication manager with RS(${K},${M}), a gateway (no blob cache) behind Envoy. Cold below ${COLD_RATE_PER_MIN} read/min for ${settings.EC_COLD_AFTER}; 4 replicas from ${settings.ACCESS_RATE_THRESHOLD} reads/min, 5 from ${settings.HIGH_ACCESS_THRESHOLD}.`,
    '',
    `Workload: ${N} blobs of ${SIZE} B, ${reads} reads (${failed} failed) at ${RATE}/s, Zipf s = 1, for ${DURATION_MS / 1000} s.`,
    '',
    '| figure | measured | model (bench/ec-zipf.ts) | goal |',
    '|---|---:|---:|---|',
    `| blobs erasure-coded (cold) | ${cold} of ${N} | ${Math.round(model.coldShare * N)} of ${N} | – |`,
    `| blobs with more than 3 replicas (hot) | ${hot} | ${Math.round(model.hotShare * N)} | – |`,
    `| blobs with 3 replicas | ${warm} | – | – |`,
    `| effective replication, cold data (shard bytes / logical) | ${x(coldFactor)} | ${x(model.coldEffective)} | ≤ 1.6× ${coldFactor > 0 && coldFactor <= 1.6 ? 'met' : 'NOT met'} |`,
    `| replicas per replicated blob (Stat, mean) | ${x(meanReplicas)} | – | ≥ 3×; more only when hot |`,
    `| effective replication, all data (bytes on stores / logical) | ${x(overall)} | ${x(model.effective)} | – |`,
    `| the directory's figure (GetClusterStatus.tier_bytes) | ${x(t.effectiveReplication)} | – | – |`,
    '',
    `Replica counts of the replicated blobs: ${[...replicaCounts]
      .sort((a, b) => a[0] - b[0])
      .map(([n, c]) => `${c} × ${n}`)
      .join(
        ', ',
      )}. Bytes on stores: replicas ${t.replicaBytes} B, shards ${t.shardBytes} B (needle headers and shard padding included).`,
    '',
  ].join('\n');
  console.log(md);
  const files = writeRunFiles(
    flags.out as string,
    'ec-zipf',
    startMachine,
    {
      blobs: N,
      size: SIZE,
      rate: RATE,
      durationMs: DURATION_MS,
      reads,
      failed,
      cold,
      hot,
      warm,
      tierBytes: {
        replicaBytes: Number(t.replicaBytes),
        shardBytes: Number(t.shardBytes),
        effectiveReplication: t.effectiveReplication,
      },
      coldFactor,
      meanReplicas,
      overall,
      model,
      settings,
    },
    md,
  );
  console.log(`wrote ${files.md}`);
} finally {
  await cluster.stop();
}
