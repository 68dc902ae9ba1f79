/**
 * Needle map + restart benchmark.
 *
 *   npx tsx bench/index-bench.ts [N] [--restart-needles=M] [--no-restart]
 *
 * 1. Loads N (default 10,000,000) entries into the NeedleMap and prints the heap
 *    cost per entry (heapUsed + arrayBuffers delta around forced GCs) and
 *    lookups/s.
 * 2. Writes a store with M (default 1,000,000) small needles straight in the
 *    on-disk format (fast), then times `Store.open` on it (index load + map build).
 *
 * Re-executes itself with --expose-gc when needed.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { encodeIndexHeader, encodeIndexRecords, type IndexRecord } from '../internal/store/index-file.js';
import { encodeNeedle } from '../internal/store/needle.js';
import { NeedleMap } from '../internal/store/needle-map.js';
import { Store } from '../internal/store/store.js';
import { encodeSuperblock } from '../internal/store/superblock.js';

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  const r = spawnSync(process.execPath, ['--expose-gc', ...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
  });
  process.exit(r.status ?? 1);
}

const args = process.argv.slice(2);
const N = Number(args.find((a) => /^\d[\d_]*$/.test(a))?.replaceAll('_', '') ?? 10_000_000);
const restartArg = args.find((a) => a.startsWith('--restart-needles='));
const M = restartArg ? Number(restartArg.split('=')[1]) : 1_000_000;
const doRestart = !args.includes('--no-restart') && M > 0;

function mem(): number {
  for (let i = 0; i < 3; i++) gc!();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

const key = (i: number) => `photo-${(i * 2654435761) >>> 0}-${i}`;
const fmt = (n: number) => n.toLocaleString('en-US', { maximumFractionDigits: 1 });

async function mapBench(): Promise<void> {
  const before = mem();
  const t0 = performance.now();
  const map = new NeedleMap({ keyAt: () => undefined, initialCapacity: 1024 });
  // Insert cost over the 100,000 inserts before 1 M and before N (does it grow with the count?).
  const marks = [1_000_000, N].filter((m, i, a) => m <= N && a.indexOf(m) === i);
  const insertUs: string[] = [];
  let windowStart = 0;
  for (let i = 0; i < N; i++) {
    if (marks.some((m) => i === m - 100_000)) windowStart = performance.now();
    map.set(key(i), { volumeId: i % 200, offset: 64 + (i % 100_000_000) * 8, length: 160, deleted: false });
    if (marks.includes(i + 1) && i + 1 >= 100_000) {
      insertUs.push(`${fmt(i + 1)}: ${(((performance.now() - windowStart) * 1000) / 100_000).toFixed(2)} µs`);
    }
  }
  const loadMs = performance.now() - t0;
  const after = mem();
  const bytes = (after - before) / N;
  console.log(`needle map: ${fmt(N)} entries loaded in ${fmt(loadMs)} ms (${fmt(N / (loadMs / 1000))}/s)`);
  console.log(`  insert cost (mean of the 100,000 inserts before): ${insertUs.join(', ')}`);
  console.log(
    `  heap per needle: ${bytes.toFixed(2)} bytes (table ${fmt(map.tableBytes / 2 ** 20)} MiB, capacity ${fmt(map.capacity)}, load ${(map.size / map.capacity).toFixed(3)}, overflow ${map.overflowSize})`,
  );
  console.log(`  requirement ≤ 32 bytes/needle: ${bytes <= 32 ? 'OK' : 'FAILED'}`);

  const probes = 2_000_000;
  const keys = Array.from({ length: 1 << 16 }, (_, i) => key((i * 7919) % N));
  let hits = 0;
  const t1 = performance.now();
  for (let i = 0; i < probes; i++) if (map.lookup(keys[i & 0xffff]!) !== undefined) hits++;
  const hitMs = performance.now() - t1;
  const missKeys = Array.from({ length: 1 << 16 }, (_, i) => `absent-${i}`);
  let misses = 0;
  const t2 = performance.now();
  for (let i = 0; i < probes; i++) if (map.lookup(missKeys[i & 0xffff]!) === undefined) misses++;
  const missMs = performance.now() - t2;
  console.log(
    `  lookups: ${fmt(probes / (hitMs / 1000))}/s (hits ${hits}/${probes}), misses: ${fmt(probes / (missMs / 1000))}/s (${misses}/${probes})`,
  );
}

async function restartBench(): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'haystack-restart-'));
  try {
    const t0 = performance.now();
    const dat = await fs.open(path.join(dir, '1.dat'), 'w');
    const idx = await fs.open(path.join(dir, '1.idx'), 'w');
    await dat.write(encodeSuperblock({ volumeId: 1, generation: 0, createdAtMs: Date.now() }));
    await idx.write(encodeIndexHeader({ volumeId: 1, generation: 0, createdAtMs: Date.now() }));
    let pos = 64;
    const data = new Uint8Array(100).fill(7);
    let parts: Uint8Array[] = [];
    let recs: IndexRecord[] = [];
    let partBytes = 0;
    const flush = async () => {
      await dat.write(Buffer.concat(parts));
      await idx.write(encodeIndexRecords(recs));
      parts = [];
      recs = [];
      partBytes = 0;
    };
    const now = Date.now();
    for (let i = 0; i < M; i++) {
      const k = key(i);
      const n = encodeNeedle({ key: k, cookie: BigInt(i + 1), flags: 0, writtenAtMs: now }, data);
      parts.push(n);
      recs.push({
        key: k,
        flags: 0,
        offset: pos,
        dataSize: data.length,
        cookie: BigInt(i + 1),
        writtenAtMs: now,
      });
      pos += n.length;
      partBytes += n.length;
      if (partBytes > 8 << 20) await flush();
    }
    await flush();
    await dat.sync();
    await idx.sync();
    await dat.close();
    await idx.close();
    const genMs = performance.now() - t0;
    console.log(`restart: wrote ${fmt(M)} needles (${fmt(pos / 2 ** 20)} MiB) in ${fmt(genMs)} ms`);
    const before = mem();
    const t1 = performance.now();
    const store = await Store.open({ dataDir: dir, maxVolumeSize: 32 * 2 ** 30, compactionThreshold: 0.6 });
    const openMs = performance.now() - t1;
    const after = mem();
    const st = await store.stats();
    console.log(
      `  Store.open with ${fmt(st.needleCount)} needles: ${fmt(openMs)} ms (heap +${fmt((after - before) / 2 ** 20)} MiB)`,
    );
    const r = await store.openRead(key(M >> 1));
    let got = 0;
    for await (const c of r.stream()) got += c.length;
    if (got !== 100) throw new Error('read back failed');
    await store.close();
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

await mapBench();
if (doRestart) await restartBench();
