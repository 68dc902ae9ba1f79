// npm run bench:failover — kill -9 the directory leader under a steady write load
// (AllocateWrite + CommitWrite loops) and measure how long until a write succeeds
// again and how many writes failed meanwhile; repeated, median and max reported.
// Also reports commit latency (CommitWrite round trip) in steady state.
// Real processes: three `haystack directory` on a real redis-server, fake stores
// with real heartbeat streams. Not a test.
//   BENCH_ROUNDS (default 7), BENCH_LEADER_TIMEOUT (default 2s, the directory default),
//   BENCH_LEADER_HEARTBEAT_INTERVAL (default 500ms), BENCH_WRITERS (default 3)
import { DirectoryClient } from '../internal/directory/client.js';
import { DirectoryCluster, FakeStore } from '../test/helpers/directory-cluster.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7);
const TTL = process.env.BENCH_LEADER_TIMEOUT ?? '2s';
const RENEW = process.env.BENCH_LEADER_HEARTBEAT_INTERVAL ?? '500ms';
const WRITERS = Number(process.env.BENCH_WRITERS ?? 3);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
};

const c = await DirectoryCluster.start({
  env: {
    LEADER_TIMEOUT: TTL,
    LEADER_HEARTBEAT_INTERVAL: RENEW,
    HEARTBEAT_INTERVAL: '500ms',
    STORE_DEGRADED_AFTER: '5s',
    STORE_DOWN_AFTER: '10s',
    LOG_LEVEL: 'warn',
  },
});
const stores = ['s1', 's2', 's3'].map((s) => new FakeStore(s, c.addresses, '', 500).start());
// A client as the gateway would use it: per-request deadline 1 s, retries inside it.
const client = new DirectoryClient({ addresses: c.addresses, deadlineMs: 1000, attemptTimeoutMs: 500 });

let stop = false;
let seq = 0;
const okAt: number[] = [];
const failAt: number[] = [];
const commitMs: number[] = [];
async function writer(w: number) {
  while (!stop) {
    const id = `bench-${w}-${seq++}`;
    try {
      const a = await client.allocateWrite({ blobId: id, size: 1024n });
      const t0 = performance.now();
      await client.commitWrite({
        blobId: id,
        cookie: a.cookie,
        size: 1024n,
        sha256: new Uint8Array(32),
        replicas: a.stores.map((s, i) => ({ storeId: s.storeId, volumeId: i + 1 })),
      });
      commitMs.push(performance.now() - t0);
      okAt.push(Date.now());
    } catch {
      failAt.push(Date.now());
      await sleep(10);
    }
  }
}

const rows: { round: number; gapMs: number; failed: number; okBefore: number }[] = [];
try {
  await c.waitLeader(20_000);
  await sleep(1500); // stores register
  const writers = Array.from({ length: WRITERS }, (_, w) => writer(w));
  await sleep(2000);
  const steady = [...commitMs];
  for (let round = 1; round <= ROUNDS; round++) {
    const leader = await c.waitLeader(20_000);
    await sleep(1000);
    const okBefore = okAt.length;
    // Measured from the moment the process is gone (a reply already on the wire
    // before the kill must not count as a write after it).
    await c.kill(leader);
    const killedAt = Date.now();
    const deadline = Date.now() + 20_000;
    while (!okAt.some((t) => t > killedAt) && Date.now() < deadline) await sleep(5);
    const first = okAt.find((t) => t > killedAt);
    const gapMs = first === undefined ? Number.NaN : first - killedAt;
    const failed = failAt.filter((t) => t > killedAt && (first === undefined || t <= first)).length;
    rows.push({ round, gapMs, failed, okBefore });
    process.stderr.write(
      `round ${round}: leader directory-${leader} killed; first write after ${gapMs} ms; ${failed} failed\n`,
    );
    await c.startOne(leader);
    await sleep(1500);
  }
  stop = true;
  await Promise.all(writers);
  const gaps = rows.map((r) => r.gapMs);
  const fails = rows.map((r) => r.failed);
  const lines = [
    '',
    `Directory failover (LEADER_TIMEOUT=${TTL}, LEADER_HEARTBEAT_INTERVAL=${RENEW}, ${WRITERS} writers, client deadline 1 s)`,
    '',
    '| round | first successful write after kill -9 (ms) | failed writes |',
    '|---|---|---|',
    ...rows.map((r) => `| ${r.round} | ${r.gapMs} | ${r.failed} |`),
    '',
    `time to first write: median ${pct(gaps, 50)} ms, max ${Math.max(...gaps)} ms`,
    `failed writes per failover: median ${pct(fails, 50)}, max ${Math.max(...fails)}`,
    `commit latency (CommitWrite round trip, steady state, n=${steady.length}): p50 ${pct(steady, 50).toFixed(1)} ms, p99 ${pct(steady, 99).toFixed(1)} ms`,
    `writes acknowledged in total: ${okAt.length}`,
    '',
  ];
  process.stdout.write(lines.join('\n'));
} finally {
  stop = true;
  await Promise.all(stores.map((s) => s.stop()));
  await c.stop();
}
