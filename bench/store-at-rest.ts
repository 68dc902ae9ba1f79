// npm run bench:store:at-rest — the cost of encryption at rest (issue 13, goal ≤ 15 % on
// 64 KiB writes): two real store processes over gRPC, one plaintext, one with a KEK_FILE
// (AES-256-GCM per needle), driven in interleaved rounds (the order alternates each
// round) so load from other processes on the box hits both alike. Each write is a
// durable, fdatasync'd needle on one store; plaintext transport (INSECURE_PLAINTEXT) so
// the figure is the at-rest cost alone. Not a test: prints Markdown.
//   BENCH_ROUNDS (default 5), BENCH_DURATION_MS per phase (default 3000), BENCH_SIZE (default 65536),
//   BENCH_RATE (default 150): ops/s offered by the paced write phase (0: no paced phase)
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnServer } from '../internal/cli/processes.js';
import { crc32c } from '../internal/store/crc32c.js';
import { newKekLine, parseKeks } from '../internal/store/crypto/kek.js';
import { NeedleSealer } from '../internal/store/crypto/needle-seal.js';
import { Store } from '../internal/store/store.js';
import { bytes, readBlob, storeClient, writeBlob } from '../test/helpers/store-client.js';
import { type PhaseResult, runPhase } from './stats.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 3000);
const SIZE = Number(process.env.BENCH_SIZE ?? 64 * 1024);
const MODES = ['plaintext', 'encrypted'] as const;
type Mode = (typeof MODES)[number];
const RATE = Number(process.env.BENCH_RATE ?? 150);
/**
 * `rate`: the phase offers that many ops/s (open loop) instead of as many as the store
 * answers. CPU per op depends on throughput (a group commit's fsync and each wake-up are
 * shared by the writes it batches), and closed-loop throughput swings with the load on a
 * shared box, so CPU/op of a closed-loop phase compares two modes at different batch
 * sizes. At a pace both stores sustain, both batch alike and only the per-write work
 * differs: the paced phase is the like-for-like CPU comparison, for the rounds in which
 * both reached the rate (the per-round ops/s column says; lower BENCH_RATE if not).
 */
const PHASES: Array<{ op: 'write' | 'read'; c: number; rate?: number }> = [
  { op: 'write', c: 1 },
  { op: 'write', c: 32 },
  ...(RATE > 0 ? [{ op: 'write' as const, c: 32, rate: RATE }] : []),
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

// Part 0, the per-byte work of one write without any I/O (what encryption adds to the CPU
// of a write, free of fsync and scheduling noise): plaintext = CRC32C + SHA-256 of the
// content; encrypted = the same + a NeedleSealer (cipher setup, nonce, AES-256-GCM of the
// data, tag) + CRC32C of the ciphertext, as store-write.ts does. CPU µs per SIZE bytes.
const SEAL_OPS = Number(process.env.BENCH_SEAL_OPS ?? 2000);
const seal: Record<Mode, number[]> = { plaintext: [], encrypted: [] };
{
  const data = bytes(SIZE, 3);
  const dek = randomBytes(32);
  const aad = randomBytes(64);
  const cpu = () => {
    const u = process.cpuUsage();
    return u.user + u.system;
  };
  const one: Record<Mode, () => void> = {
    plaintext: () => {
      crc32c(data, 0);
      createHash('sha256').update(data).digest();
    },
    encrypted: () => {
      crc32c(data, 0);
      const sha = createHash('sha256').update(data);
      const s = new NeedleSealer(dek, aad);
      crc32c(s.update(data), 0);
      s.final();
      sha.digest();
    },
  };
  for (let round = 0; round < ROUNDS + 1; round++) {
    for (const mode of round % 2 === 0 ? MODES : ([...MODES].reverse() as Mode[])) {
      const t = cpu();
      for (let i = 0; i < SEAL_OPS; i++) one[mode]();
      if (round > 0) seal[mode].push((cpu() - t) / SEAL_OPS);
    }
  }
}

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
const label = (p: (typeof PHASES)[number]) =>
  `${p.op} ${SIZE / 1024}KiB c=${p.c}${p.rate ? ` paced ${p.rate}/s` : ''}`;
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
        const t0 = performance.now();
        const r = await runPhase(label(p), p.c, DURATION_MS, async (_w, i) => {
          if (p.rate) {
            // Op i is due at i / rate seconds: an open-loop pace (a worker behind schedule goes at once).
            const wait = t0 + (i * 1000) / p.rate - performance.now();
            if (wait > 0) await new Promise((res) => setTimeout(res, wait));
          }
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
let out = `\n### Write path without I/O: CPU µs per ${SIZE / 1024} KiB write, ${ROUNDS} alternating blocks of ${SEAL_OPS}\n\n`;
out +=
  '| plaintext (CRC32C + SHA-256) | encrypted (+ seal + ciphertext CRC32C) | added µs (median) |\n|---:|---:|---:|\n';
out += `| ${median(seal.plaintext).toFixed(1)} | ${median(seal.encrypted).toFixed(1)} | ${median(seal.encrypted.map((x, i) => x - seal.plaintext[i]!)).toFixed(1)} |\n`;
out += `\n### Engine (in process, no gRPC): CPU µs per ${SIZE / 1024} KiB op, ${ROUNDS} alternating blocks of ${ENGINE_BLOCK}\n\n`;
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
  // A paced op's latency would include its wait for its slot: not shown.
  const la = p.rate ? 'paced' : lat(a);
  const lb = p.rate ? 'paced' : lat(b);
  out += `| ${label(p)} | ${ca.toFixed(0)} → ${cb.toFixed(0)} | ${cpuCost.toFixed(1)} % | ${median(a.map((r) => r.opsPerSec)).toFixed(0)} | ${median(b.map((r) => r.opsPerSec)).toFixed(0)} | ${cost.toFixed(1)} % | ${la} | ${lb} | ${rounds} |\n`;
}
process.stdout.write(out);
