// npm run bench:store-down — availability when one of three stores fails (issue 14):
// the bench cluster (bench/target.ts: 3 directories, 3 stores, 2 gateways, Envoy;
// production timings: HEARTBEAT_INTERVAL 5 s, STORE_DOWN_AFTER 15 s) under a
// steady upload load through Envoy with the SDK (its default retries, as a user
// runs it); then one store is killed with SIGKILL (`kill`) or frozen with SIGSTOP
// (`pause`, a hung host: no TCP reset). Reports the time from the fault to the
// first acknowledged upload that STARTED after it, and the uploads that failed in
// the following --watch window. With three stores every placement group has all
// three as members, so every upload meets the failed store.
// Flags: --layout (v1,placement: PLACEMENT_GROUPS=0 or the default), --fault
// (kill,pause), --rounds (2), --writers (4), --watch (120 s: the longest wait for
// an upload to succeed), --env KEY=VALUE (repeatable), --out (bench/results).
import os from 'node:os';
import { parseArgs } from 'node:util';
import { HaystackClient } from '../internal/sdk/index.js';
import { machine } from './report.js';
import { loadAverageLine, writeRunFiles } from './run-files.js';
import { localTarget, parseEnvFlags } from './target.js';
import { payload } from './workload.js';

const { values: flags } = parseArgs({
  options: {
    layout: { type: 'string', default: 'v1,placement' },
    fault: { type: 'string', default: 'kill,pause' },
    rounds: { type: 'string', default: '2' },
    writers: { type: 'string', default: '4' },
    watch: { type: 'string', default: '120' },
    env: { type: 'string', multiple: true, default: [] },
    out: { type: 'string', default: 'bench/results' },
  },
});
const layouts = (flags.layout as string).split(',');
const faults = (flags.fault as string).split(',');
for (const l of layouts)
  if (l !== 'v1' && l !== 'placement') throw new Error(`--layout: v1 and/or placement, got ${l}`);
for (const f of faults)
  if (f !== 'kill' && f !== 'pause') throw new Error(`--fault: kill and/or pause, got ${f}`);
const rounds = Number(flags.rounds);
const writers = Number(flags.writers);
const watchMs = Number(flags.watch) * 1000;
if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new Error('--rounds: 1..20');
if (!Number.isInteger(writers) || writers < 1 || writers > 64) throw new Error('--writers: 1..64');
if (!Number.isFinite(watchMs) || watchMs < 5000) throw new Error('--watch: seconds, at least 5');
const extraEnv = parseEnvFlags(flags.env as string[]);

interface Upload {
  start: number;
  end: number;
  ok: boolean;
  error?: string;
}

interface RoundResult {
  layout: string;
  fault: string;
  round: number;
  /** ms from the fault to the first acknowledged upload started after it; null: none within --watch. */
  firstAckMs: number | null;
  /** Uploads that failed (after the SDK's retries) between the fault and the end of the window. */
  failed: number;
  /** Uploads acknowledged in that window. */
  acked: number;
  /** The first failure's message (what a user saw). */
  firstError?: string;
  loadAverage: number[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function round(layout: string, fault: string, n: number): Promise<RoundResult> {
  const env: Record<string, string> = { ...extraEnv };
  if (layout === 'v1') env.PLACEMENT_GROUPS = '0';
  const t = await localTarget({ env });
  const cluster = t.cluster;
  if (!cluster) throw new Error('the local target has no cluster');
  const sdk = new HaystackClient({ url: t.url });
  const uploads: Upload[] = [];
  let stop = false;
  let seq = 0;
  const loops = Array.from({ length: writers }, async (_, w) => {
    while (!stop) {
      const i = seq++;
      const start = Date.now();
      try {
        await sdk.upload(payload(1024, (n * 7919 + w * 104_729 + i) >>> 0), {
          id: `down-${layout}-${fault}-${n}-${i}`,
        });
        uploads.push({ start, end: Date.now(), ok: true });
      } catch (err) {
        uploads.push({ start, end: Date.now(), ok: false, error: (err as Error).message.slice(0, 300) });
        await sleep(50);
      }
    }
  });
  const victim = cluster.stores[1];
  if (!victim) throw new Error('no store-1');
  try {
    // Steady load first: on a loaded machine the first upload can take longer than the
    // 3 s of steady state (the groups are placed once the stores have been stable).
    const warmDeadline = Date.now() + 60_000;
    while (!uploads.some((u) => u.ok) && Date.now() < warmDeadline) await sleep(200);
    if (!uploads.some((u) => u.ok)) throw new Error('no upload succeeded within 60 s, before the fault');
    await sleep(3000);
    const at = Date.now();
    victim.child.kill(fault === 'kill' ? 'SIGKILL' : 'SIGSTOP');
    const deadline = at + watchMs;
    const firstAck = () => uploads.find((u) => u.ok && u.start >= at);
    while (!firstAck() && Date.now() < deadline) await sleep(100);
    const ack = firstAck();
    // A few more seconds of steady state after the first success.
    if (ack) await sleep(3000);
    const windowEnd = Date.now();
    const after = uploads.filter((u) => u.end >= at && u.end <= windowEnd);
    const failures = after.filter((u) => !u.ok);
    return {
      layout,
      fault,
      round: n,
      firstAckMs: ack ? ack.end - at : null,
      failed: failures.length,
      acked: after.length - failures.length,
      ...(failures[0]?.error ? { firstError: failures[0].error } : {}),
      loadAverage: os.loadavg().map((x) => Math.round(x * 100) / 100),
    };
  } finally {
    stop = true;
    if (fault === 'pause') victim.child.kill('SIGCONT');
    await Promise.allSettled(loops);
    await t.close();
  }
}

const started = machine();
const loadBefore = os.loadavg();
const results: RoundResult[] = [];
for (const layout of layouts) {
  for (const fault of faults) {
    for (let n = 1; n <= rounds; n++) {
      const r = await round(layout, fault, n);
      results.push(r);
      console.log(
        `${layout} ${fault} round ${n}: first upload acknowledged ${r.firstAckMs === null ? `NOT within ${watchMs / 1000} s` : `${(r.firstAckMs / 1000).toFixed(2)} s`} after the fault; ${r.failed} failed, ${r.acked} acknowledged; load ${r.loadAverage.join(', ')}`,
      );
    }
  }
}

const secs = (ms: number | null) => (ms === null ? `> ${watchMs / 1000}` : (ms / 1000).toFixed(2));
const lines = [
  '# One of three stores fails under an upload load',
  '',
  `${writers} writers of 1 KiB through Envoy with the SDK (default retries), production timings; ${loadAverageLine(loadBefore)}.`,
  '',
  '| layout | fault | round | first acknowledged upload after the fault (s) | failed uploads | acknowledged | first error |',
  '| --- | --- | ---: | ---: | ---: | ---: | --- |',
  ...results.map(
    (r) =>
      `| ${r.layout} | ${r.fault} | ${r.round} | ${secs(r.firstAckMs)} | ${r.failed} | ${r.acked} | ${(r.firstError ?? '').replace(/\|/g, '/').slice(0, 160)} |`,
  ),
  '',
];
const md = lines.join('\n');
console.log(`\n${md}`);
const files = writeRunFiles(flags.out as string, 'store-down', started, { writers, watchMs, results }, md);
console.log(`saved ${files.md}`);
