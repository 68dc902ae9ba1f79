// npm run bench:store:at-rest — the cost of encryption at rest (issue 13, goal ≤ 15 % on
// 64 KiB writes): two real store processes over gRPC, one plaintext, one with a KEK_FILE
// (AES-256-GCM per needle), driven in interleaved rounds (the order alternates each
// round) so load from other processes on the box hits both alike. Each write is a
// durable, fdatasync'd needle on one store; plaintext transport (INSECURE_PLAINTEXT) so
// the figure is the at-rest cost alone. Not a test: prints Markdown.
//   BENCH_ROUNDS (default 5), BENCH_DURATION_MS per phase (default 3000), BENCH_SIZE (default 65536)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnServer } from '../internal/cli/processes.js';
import { newKekLine, parseKeks } from '../internal/store/crypto/kek.js';
import { Store } from '../internal/store/store.js';
import { bytes, readBlob, storeClient, writeBlob } from '../test/helpers/store-client.js';
import { type PhaseResult, runPhase } from './stats.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 3000);
const SIZE = Number(process.env.BENCH_SIZE ?? 64 * 1024);
const MODES = ['plaintext', 'encrypted'] as const;
type Mode = (typeof MODES)[number];
const PHASES: Array<{ op: 'write' | 'read'; c: number }> = [
  { op: 'write', c: 1 },
  { op: 'write', c: 32 },
  { op: 'read', c: 32 },
];

const root = mkdtempSync(path.join(tmpdir(), 'haystack-at-rest-'));
const kekFile = path.join(root, 'kek');
writeFileSync(kekFile, `${newKekLine('bench')}\n`, { mode: 0o600 });
const start = (mode: Mode) =>
  spawnServer({
    name: mode,
    args: ['store', '--listen', '127.0.0.1:0', '--data', path.join(root, mode)],
    // No TLS: transport CPU would only dilute the at-rest cost this measures.
    env: {
      STORE_ID: mode,
      LOG_LEVEL: 'warn',
      INSECURE_PLAINTEXT: '1',
      ...(mode === 'encrypted' ? { KEK_FILE: kekFile } : {}),
    },
  });

// Part 1, the engine in this process (no gRPC): CPU µs per durable 64 KiB write and read,
// blocks of ops alternating between a plaintext and an encrypted Store.
const ENGINE_BLOCK = Number(process.env.BENCH_ENGINE_BLOCK ?? 400);
const engine: Record<Mode, { write: number[]; read: number[] }> = {
  plaintext: { write: [], read: [] },
  encrypted: { write: [], read: [] },
};
{
  const keyring = parseKeks(readFileSync(kekFile, 'utf8'));
  const open = (mode: Mode) =>
    Store.open({
      dataDir: path.join(root, `engine-${mode}`),
      maxVolumeSize: 4 * 1024 ** 3,
      ...(mode === 'encrypted' ? { keyring } : {}),
    });
  const engines = { plaintext: await open('plaintext'), encrypted: await open('encrypted') };
  const data = bytes(SIZE, 7);
  const cpu = () => {
    const u = process.cpuUsage();
    return u.user + u.system;
  };
  for (let round = 0; round < ROUNDS + 1; round++) {
    const order = round % 2 === 0 ? MODES : ([...MODES].reverse() as Mode[]);
    for (const mode of order) {
      const st = engines[mode];
      let t = cpu();
      for (let i = 0; i < ENGINE_BLOCK; i++) {
        const w = await st.beginWrite(`e${round}-${i}`, 1n, SIZE);
        await w.write(data);
        await w.commit();
      }
      const wUs = (cpu() - t) / ENGINE_BLOCK;
      t = cpu();
      for (let i = 0; i < ENGINE_BLOCK; i++) {
        const r = await st.openRead(`e${round}-${i}`);
        for await (const _ of r.stream()) {
          // consume
        }
      }
      const rUs = (cpu() - t) / ENGINE_BLOCK;
      if (round === 0) continue; // JIT warm-up
      engine[mode].write.push(wUs);
      engine[mode].read.push(rUs);
      process.stderr.write(
        `engine round ${round} ${mode}: write ${wUs.toFixed(0)} µs, read ${rUs.toFixed(0)} µs CPU/op\n`,
      );
    }
  }
  await Promise.all(Object.values(engines).map((e) => e.close()));
}

const stores = { plaintext: await start('plaintext'), encrypted: await start('encrypted') };
const results: Record<Mode, Record<string, PhaseResult[]>> = { plaintext: {}, encrypted: {} };
/** Store-process CPU µs per op of each phase: robust to load from other processes, unlike ops/s. */
const cpuPerOp: Record<Mode, Record<string, number[]>> = { plaintext: {}, encrypted: {} };
const TICK_US = 1e6 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
/** utime + stime of a process in µs (/proc/<pid>/stat fields 14 and 15). */
const cpuUs = (pid: number) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_US;
};
const label = (p: (typeof PHASES)[number]) => `${p.op} ${SIZE / 1024}KiB c=${p.c}`;
try {
  const payloads = Array.from({ length: 8 }, (_, i) => bytes(SIZE, i + 1));
  const clients = {
    plaintext: storeClient(stores.plaintext.address, { direct: true, security: { mode: 'plaintext' } }),
    encrypted: storeClient(stores.encrypted.address, { direct: true, security: { mode: 'plaintext' } }),
  };
  const written: Record<Mode, string[]> = { plaintext: [], encrypted: [] };
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? MODES : ([...MODES].reverse() as Mode[]);
    for (const p of PHASES) {
      for (const mode of order) {
        const client = clients[mode];
        const pid = stores[mode].child.pid!;
        const cpu0 = cpuUs(pid);
        let started = 0; // every op of the phase, warm-up included, as the CPU reading covers them all
        const r = await runPhase(label(p), p.c, DURATION_MS, async (_w, i) => {
          started++;
          if (p.op === 'write') {
            const id = `r${round}-c${p.c}-${i}`;
            await writeBlob(client, id, payloads[i % payloads.length]!);
            written[mode].push(id);
          } else {
            const ids = written[mode];
            await readBlob(client, ids[i % ids.length]!);
          }
        });
        const us = (cpuUs(pid) - cpu0) / Math.max(1, started);
        results[mode][label(p)] = [...(results[mode][label(p)] ?? []), r];
        cpuPerOp[mode][label(p)] = [...(cpuPerOp[mode][label(p)] ?? []), us];
        process.stderr.write(
          `round ${round + 1} ${mode} ${r.name}: ${r.opsPerSec.toFixed(0)}/s, store CPU ${us.toFixed(0)} µs/op\n`,
        );
      }
    }
  }
} finally {
  await Promise.all(Object.values(stores).map((s) => s.stop()));
  rmSync(root, { recursive: true, force: true });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
let out = `\n### Engine (in process, no gRPC): CPU µs per ${SIZE / 1024} KiB op, ${ROUNDS} alternating blocks of ${ENGINE_BLOCK}\n\n`;
out +=
  '| op | plaintext (median) | encrypted (median) | cost (median of per-round ratios) | per block plaintext → encrypted |\n|---|---:|---:|---:|---|\n';
for (const op of ['write', 'read'] as const) {
  const a = median(engine.plaintext[op]);
  const b = median(engine.encrypted[op]);
  const ratio = median(engine.plaintext[op].map((x, i) => engine.encrypted[op][i]! / x - 1)) * 100;
  const blocks = engine.plaintext[op]
    .map((x, i) => `${x.toFixed(0)} → ${engine.encrypted[op][i]!.toFixed(0)}`)
    .join(', ');
  out += `| ${op} ${SIZE / 1024} KiB (durable) | ${a.toFixed(0)} | ${b.toFixed(0)} | ${ratio.toFixed(1)} % | ${blocks} |\n`;
}
out += `\n### Store processes over gRPC`;
out += ` (${new Date().toISOString()}, ${ROUNDS} interleaved rounds of ${DURATION_MS} ms per phase)\n\n`;

out +=
  '| phase | store CPU µs/op plaintext → encrypted (median) | CPU cost (median of per-round ratios) | plaintext ops/s (median) | encrypted ops/s (median) | throughput cost (median of per-round ratios) | plaintext p50 / p99 ms | encrypted p50 / p99 ms | per-round ops/s plaintext → encrypted |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n';
for (const p of PHASES) {
  const a = results.plaintext[label(p)] ?? [];
  const b = results.encrypted[label(p)] ?? [];
  const pa = cpuPerOp.plaintext[label(p)] ?? [];
  const pb = cpuPerOp.encrypted[label(p)] ?? [];
  const ca = median(pa);
  const cb = median(pb);
  // Median of the per-round ratios: each round's pair ran back to back, under the same load.
  const cpuCost = median(pa.map((x, i) => pb[i]! / x - 1)) * 100;
  const cost = median(a.map((x, i) => 1 - b[i]!.opsPerSec / x.opsPerSec)) * 100;
  const lat = (rs: PhaseResult[]) =>
    `${median(rs.map((r) => r.p50ms)).toFixed(2)} / ${median(rs.map((r) => r.p99ms)).toFixed(2)}`;
  const rounds = a.map((x, i) => `${x.opsPerSec.toFixed(0)} → ${b[i]!.opsPerSec.toFixed(0)}`).join(', ');
  out += `| ${label(p)} | ${ca.toFixed(0)} → ${cb.toFixed(0)} | ${cpuCost.toFixed(1)} % | ${median(a.map((r) => r.opsPerSec)).toFixed(0)} | ${median(b.map((r) => r.opsPerSec)).toFixed(0)} | ${cost.toFixed(1)} % | ${lat(a)} | ${lat(b)} | ${rounds} |\n`;
}
process.stdout.write(out);
