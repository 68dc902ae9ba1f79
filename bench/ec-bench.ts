// npm run bench:ec — Reed–Solomon encode and decode throughput of the two npm
// libraries considered for the cold tier (docs/design/ec-tier.md):
//   wasm:    @digitaldefiance/reed-solomon-erasure.wasm (Rust reed-solomon-erasure, WebAssembly)
//   ronomon: @ronomon/reed-solomon (C, native addon, runs in libuv's threadpool)
// and of the chosen one behind internal/ec (split + per-shard CRC32C + encode; decode
// with m shards missing, checksums verified). The WASM build's allocator traps
// ("memory access out of bounds" in wee_alloc) after some mixed calls on one
// instance; the bench re-instantiates it then and prints how often that happened.
//
// For each RS(k, m) and blob size it runs one operation at a time for --duration
// seconds and prints MB/s of blob bytes against wall time and against CPU time of
// this process (user + system, so the native library's threadpool work counts):
// "per core" is the CPU figure, which other load on the machine does not shrink.
// Decode loses m shards (data shards first: the worst case), so every call solves.
//
// Then (bench/ec-reads.ts, unless --no-reads) read latency on six real store
// processes: a replica read, an RS(4,2) systematic read and a degraded read.
//
// Flags: --duration s per measurement (2), --no-reads, --out (bench/results).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { ReedSolomonErasure } from '@digitaldefiance/reed-solomon-erasure.wasm';
import { decodeBlob, encodeBlob } from '../internal/ec/codec.js';
import { rs as ronomon } from '../internal/ec/ronomon.js';
import { measureReads } from './ec-reads.js';
import { zipfModel } from './ec-zipf.js';
import { machine } from './report.js';
import { loadAverageLine, writeRunFiles } from './run-files.js';

const { values: flags } = parseArgs({
  options: {
    duration: { type: 'string', default: '2' },
    'no-reads': { type: 'boolean', default: false },
    out: { type: 'string', default: 'bench/results' },
  },
});
const durationMs = 1000 * Number(flags.duration);
if (!Number.isFinite(durationMs) || durationMs <= 0) throw new Error(`bad --duration: ${flags.duration}`);

const require = createRequire(import.meta.url);
// The package's ESM build loads its .wasm with require/__dirname: instantiate from bytes.
const wasmBytes = readFileSync(require.resolve('@digitaldefiance/reed-solomon-erasure.wasm/wasm'));
let wasm = ReedSolomonErasure.fromBytes(wasmBytes);
let wasmTraps = 0;

/** One library's raw encode/reconstruct on a blob split into k shards of `shard` bytes. */
interface Lib {
  name: string;
  encode(k: number, m: number, data: Buffer, shard: number): Promise<void>;
  decode(k: number, m: number, data: Buffer, shard: number): Promise<void>;
}

function wasmLib(): Lib {
  const run = (k: number, m: number, data: Buffer, shard: number, lose: boolean) => {
    try {
      once(k, m, data, shard, lose);
    } catch (err) {
      if (!(err instanceof Error) || err.name !== 'RuntimeError') throw err;
      wasmTraps++;
      wasm = ReedSolomonErasure.fromBytes(wasmBytes);
    }
  };
  const once = (k: number, m: number, data: Buffer, shard: number, lose: boolean) => {
    const all = new Uint8Array(shard * (k + m));
    all.set(data.subarray(0, Math.min(data.length, shard * k)));
    if (!lose) {
      const rc = wasm.encode(all, k, m);
      if (rc !== ReedSolomonErasure.RESULT_OK) throw new Error(ReedSolomonErasure.getResultMessage(rc));
      return;
    }
    // Lose the first m shards (data shards: the decode must solve for them).
    const present = Array.from({ length: k + m }, (_, i) => i >= m);
    all.fill(0, 0, m * shard);
    const rc = wasm.reconstruct(all, k, m, present);
    if (rc !== ReedSolomonErasure.RESULT_OK) throw new Error(ReedSolomonErasure.getResultMessage(rc));
  };
  return {
    name: 'wasm',
    encode: async (k, m, d, s) => run(k, m, d, s, false),
    decode: async (k, m, d, s) => run(k, m, d, s, true),
  };
}

function ronomonLib(): Lib {
  const contexts = new Map<string, unknown>();
  const ctx = (k: number, m: number) => {
    const key = `${k},${m}`;
    if (!contexts.has(key)) contexts.set(key, ronomon.create(k, m));
    return contexts.get(key);
  };
  const run = (k: number, m: number, data: Buffer, shard: number, lose: boolean) =>
    new Promise<void>((resolve, reject) => {
      const buffer = Buffer.alloc(shard * k);
      data.copy(buffer, 0, 0, Math.min(data.length, buffer.length));
      const parity = Buffer.alloc(shard * m);
      let sources = 0;
      let targets = 0;
      for (let i = 0; i < k + m; i++) {
        const target = lose ? i < m : i >= k;
        if (target) targets |= 1 << i;
        else sources |= 1 << i;
      }
      ronomon.encode(
        ctx(k, m),
        sources,
        targets,
        buffer,
        0,
        buffer.length,
        parity,
        0,
        parity.length,
        (err) => (err ? reject(err) : resolve()),
      );
    });
  return {
    name: 'ronomon',
    encode: (k, m, d, s) => run(k, m, d, s, false),
    decode: (k, m, d, s) => run(k, m, d, s, true),
  };
}

/** The chosen library behind internal/ec: split, encode, CRC32C per shard; decode verifies and solves. */
function codecLib(): Lib {
  const encoded = new Map<string, Awaited<ReturnType<typeof encodeBlob>>>();
  return {
    name: 'internal/ec (ronomon)',
    encode: async (k, m, d) => {
      await encodeBlob(d, { k, m });
    },
    decode: async (k, m, d) => {
      const enc = encoded.get(`${k},${m},${d.length}`) ?? (await encodeBlob(d, { k, m }));
      encoded.set(`${k},${m},${d.length}`, enc);
      await decodeBlob(
        enc.layout,
        enc.shards.map((s, i) => (i < m ? undefined : s)),
      );
    },
  };
}

async function measure(op: () => Promise<void>, bytes: number): Promise<{ wallMBs: number; cpuMBs: number }> {
  for (let i = 0; i < 20; i++) await op(); // warm up (JIT, WASM tier-up, contexts)
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < durationMs) {
    await op();
    n++;
  }
  const wallS = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const cpuS = (cpu.user + cpu.system) / 1e6;
  const mb = (n * bytes) / 1e6;
  return { wallMBs: mb / wallS, cpuMBs: mb / cpuS };
}

const CODES: Array<[number, number]> = [
  [2, 1],
  [4, 2],
  [10, 4],
];
const SIZES = [64 * 1024, 1024 * 1024];

const start = machine();
const loadBefore = os.loadavg();
const rows: Array<Record<string, string | number>> = [];
const lines: string[] = [
  '| library | RS(k,m) | blob | encode MB/s per core (wall) | decode, m lost, MB/s per core (wall) |',
  '| --- | --- | --- | --- | --- |',
];
for (const lib of [wasmLib(), ronomonLib(), codecLib()]) {
  for (const [k, m] of CODES) {
    for (const size of SIZES) {
      // Shards are padded to a multiple of 8 bytes (ronomon needs it; the codec does the same).
      const shard = Math.ceil(size / k / 8) * 8;
      const data = Buffer.alloc(size);
      for (let i = 0; i < size; i++) data[i] = (i * 2654435761) >>> 24;
      const enc = await measure(() => lib.encode(k, m, data, shard), size);
      const dec = await measure(() => lib.decode(k, m, data, shard), size);
      const f = (x: number) => x.toFixed(0);
      const sizeName = size >= 1 << 20 ? `${size >> 20} MiB` : `${size >> 10} KiB`;
      const line = `| ${lib.name} | (${k},${m}) | ${sizeName} | ${f(enc.cpuMBs)} (${f(enc.wallMBs)}) | ${f(dec.cpuMBs)} (${f(dec.wallMBs)}) |`;
      lines.push(line);
      console.log(line);
      rows.push({
        library: lib.name,
        k,
        m,
        blobBytes: size,
        encodeMBsPerCore: enc.cpuMBs,
        encodeMBsWall: enc.wallMBs,
        decodeMBsPerCore: dec.cpuMBs,
        decodeMBsWall: dec.wallMBs,
      });
    }
  }
}
const reads = flags['no-reads'] ? [] : await measureReads(SIZES, durationMs);
const readLines = [
  '| read | reads/s | p50 ms | p99 ms |',
  '| --- | --- | --- | --- |',
  ...reads.map(
    (r) => `| ${r.name} | ${r.opsPerSec.toFixed(0)} | ${r.p50ms.toFixed(2)} | ${r.p99ms.toFixed(2)} |`,
  ),
];
if (reads.length) console.log(readLines.join('\n'));
const model = [1_000, 10_000, 100_000].flatMap((rpm) =>
  [
    { k: 4, m: 2 },
    { k: 10, m: 4 },
  ].map((c) => zipfModel(1_000_000, rpm, c)),
);
const modelLines = [
  '| blobs | reads/min (Zipf s=1) | code | cold share | hot (4-5 replicas) share | effective factor | cold data factor |',
  '| --- | --- | --- | --- | --- | --- | --- |',
  ...model.map(
    (z) =>
      `| ${z.blobs} | ${z.readsPerMin} | ${z.code} | ${(100 * z.coldShare).toFixed(1)} % | ${(100 * z.hotShare).toFixed(3)} % | ${z.effective.toFixed(3)}× | ${z.coldEffective.toFixed(3)}× |`,
  ),
];
console.log(modelLines.join('\n'));
const load = loadAverageLine(loadBefore);
const traps = `wasm allocator traps (instance re-created): ${wasmTraps}`;
console.log(`${traps}\n${load}`);
const md = `# bench:ec\n\n${lines.join('\n')}\n\n${reads.length ? `${readLines.join('\n')}\n\n` : ''}Policy model (bench/ec-zipf.ts, not a cluster measurement):\n\n${modelLines.join('\n')}\n\n${traps}\n\n${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} cores; ${load}\n`;
const files = writeRunFiles(flags.out, 'ec', start, { rows, reads, model, wasmTraps }, md);
console.log(`results: ${files.md}`);
