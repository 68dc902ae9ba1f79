// npm run bench:store-cpu — what one durable write costs the stores, and how that cost
// depends on the write rate. Two parts, each at several concurrencies:
//   engine  the Store in this process (no RPC): beginWrite → write → commit, fdatasync'd
//           by the volume's group committer; CPU µs per write from process.cpuUsage (all
//           threads, the libuv pool's fs work included).
//   stores  three store processes over the direct gRPC path, plaintext, no fencing term:
//           each write goes to the first with forward_to the other two (3 replicas, each
//           fdatasync'd before the ack, as in the cluster); CPU µs per write of the three
//           from /proc/<pid>/stat (10 ms ticks) and of this client.
// Fewer writes in flight means fewer needles per group commit (each flush is two
// fdatasyncs and an index write) and fewer requests per event-loop wake-up, so the CPU per
// write grows as the rate falls. A cluster bench on 2 cores runs the stores at the rate the
// whole cluster allows, so read these figures at that rate (docs/benchmarks.md).
// Not a test: prints Markdown.
//
// Flags: --concurrency (1,4,16: the list to run), --size bytes (1024), --writes per
// measured round (2000), --rounds (4; the first is the JIT's and is not reported).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { spawnServer } from '../internal/cli/processes.js';
import { Store } from '../internal/store/store.js';
import { bytes, storeClient, writeBlob } from '../test/helpers/store-client.js';
import { processCpuSeconds } from './cpu.js';

const { values: flags } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '1,4,16' },
    size: { type: 'string', default: '1024' },
    writes: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '4' },
  },
});
const positiveInt = (name: string, v: string): number => {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`--${name}: expected a positive integer, got ${v}`);
  return n;
};
const concurrencies = (flags.concurrency as string).split(',').map((c) => positiveInt('concurrency', c));
const SIZE = positiveInt('size', flags.size as string);
const WRITES = positiveInt('writes', flags.writes as string);
const ROUNDS = Math.max(2, positiveInt('rounds', flags.rounds as string));

/** user + system µs of this process (all its threads). */
const selfCpu = (): number => {
  const u = process.cpuUsage();
  return u.user + u.system;
};
/** user + system µs of `pid` from /proc (10 ms ticks). */
const procCpu = (pid: number): number => {
  const s = processCpuSeconds(pid);
  if (s === undefined) throw new Error(`store process ${pid} is gone`);
  return s * 1e6;
};

/** Runs `n` ops `c` at a time; resolves with the wall seconds. */
async function drive(c: number, n: number, op: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: c }, async () => {
      while (next < n) await op(next++);
    }),
  );
  return (performance.now() - t0) / 1000;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

interface Row {
  part: string;
  c: number;
  perSec: number;
  cpu: string;
  total: number;
}
const rows: Row[] = [];
const root = mkdtempSync(path.join(tmpdir(), 'haystack-store-cpu-'));
const data = bytes(SIZE, 1);
const log = (s: string) => process.stderr.write(`[store-cpu] ${s}\n`);

try {
  for (const c of concurrencies) {
    const st = await Store.open({ dataDir: path.join(root, `engine-c${c}`), maxVolumeSize: 4 * 1024 ** 3 });
    const us: number[] = [];
    const rate: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const t = selfCpu();
      const s = await drive(c, WRITES, async (i) => {
        const w = await st.beginWrite(`r${r}-${i}`, 1n, SIZE);
        await w.write(data);
        await w.commit();
      });
      if (r === 0) continue;
      us.push((selfCpu() - t) / WRITES);
      rate.push(WRITES / s);
    }
    await st.close();
    const total = median(us);
    rows.push({ part: 'engine (in process)', c, perSec: median(rate), cpu: total.toFixed(0), total });
    log(`engine c=${c}: ${total.toFixed(0)} µs/write`);
  }

  for (const c of concurrencies) {
    const start = (name: string) =>
      spawnServer({
        name,
        args: ['store', '--listen', '127.0.0.1:0', '--data', path.join(root, `c${c}-${name}`)],
        env: { STORE_ID: name, LOG_LEVEL: 'warn', INSECURE_PLAINTEXT: '1' },
      });
    const stores = [await start('s1'), await start('s2'), await start('s3')];
    try {
      const pids = stores.map((s) => s.child.pid as number);
      const client = storeClient(stores[0]!.address, { direct: true, security: { mode: 'plaintext' } });
      const forwardTo = stores.slice(1).map((s) => ({ storeId: s.name, address: s.address }));
      const per: number[][] = [];
      const mine: number[] = [];
      const rate: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        const before = pids.map(procCpu);
        const t = selfCpu();
        const s = await drive(c, WRITES, async (i) => {
          await writeBlob(client, `r${r}-${i}`, data, { forwardTo });
        });
        if (r === 0) continue;
        per.push(pids.map((p, i) => (procCpu(p) - (before[i] as number)) / WRITES));
        mine.push((selfCpu() - t) / WRITES);
        rate.push(WRITES / s);
      }
      const each = [0, 1, 2].map((i) => median(per.map((p) => p[i] as number)));
      const total = each.reduce((a, b) => a + b, 0);
      rows.push({
        part: 'three stores (gRPC, forward_to)',
        c,
        perSec: median(rate),
        cpu: `${each.map((x) => x.toFixed(0)).join(' + ')} (client ${median(mine).toFixed(0)})`,
        total,
      });
      log(`stores c=${c}: ${total.toFixed(0)} µs/write`);
    } finally {
      await Promise.all(stores.map((s) => s.stop()));
    }
  }
} finally {
  rmSync(root, { recursive: true, force: true });
}

const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
process.stdout.write(
  `\n## Store CPU per durable write (${new Date().toISOString()}; ${SIZE} B, ${WRITES} writes per round, ` +
    `median of ${ROUNDS - 1} rounds after one not counted; load average after: ${load})\n\n` +
    '| part | concurrency | writes/s | CPU µs per write (first + replicas) | total µs |\n|---|---:|---:|---|---:|\n' +
    rows
      .map((r) => `| ${r.part} | ${r.c} | ${r.perSec.toFixed(0)} | ${r.cpu} | ${r.total.toFixed(0)} |`)
      .join('\n') +
    '\n',
);
