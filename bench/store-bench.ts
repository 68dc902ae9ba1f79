// npm run bench:store — writes/s and reads/s with p50/p99 against real store
// processes over gRPC: 1 KiB, 64 KiB and 1 MiB blobs at concurrency 1 and 32,
// on one store and with three-way fan-out. Not a test: prints a Markdown table.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnServer } from '../internal/cli/processes.js';
import { bytes, readBlob, storeClient, writeBlob } from '../test/helpers/store-client.js';
import { type PhaseResult, runPhase, table } from './stats.js';

const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 3000);
const SIZES: Array<[string, number]> = [
  ['1KiB', 1024],
  ['64KiB', 64 * 1024],
  ['1MiB', 1024 * 1024],
];
const CONCURRENCY = [1, 32];

const root = mkdtempSync(path.join(tmpdir(), 'haystack-bench-'));
const start = (name: string) =>
  spawnServer({
    name,
    args: ['store', '--listen', '127.0.0.1:0', '--data', path.join(root, name)],
    env: { STORE_ID: name, LOG_LEVEL: 'warn' },
  });

const stores = [await start('bench-1'), await start('bench-2'), await start('bench-3')];
const results: PhaseResult[] = [];
try {
  const primary = storeClient(stores[0]!.address, { direct: process.env.BENCH_CLIENT !== 'connect' });
  const forwardTo = stores.slice(1).map((s) => ({ storeId: s.name, address: s.address }));
  for (const fanout of [false, true]) {
    for (const [label, size] of SIZES) {
      const payloads = Array.from({ length: 8 }, (_, i) => bytes(size, i + 1));
      for (const c of CONCURRENCY) {
        const prefix = `${fanout ? 'x3' : 'x1'}-${label}-c${c}`;
        const written: string[] = [];
        const w = await runPhase(
          `write ${label} c=${c}${fanout ? ' (3 replicas)' : ''}`,
          c,
          DURATION_MS,
          async (_w, i) => {
            const id = `${prefix}-${i}`;
            await writeBlob(primary, id, payloads[i % payloads.length]!, fanout ? { forwardTo } : {});
            written.push(id);
          },
        );
        results.push(w);
        process.stderr.write(`${w.name}: ${w.opsPerSec.toFixed(0)}/s\n`);
        if (fanout) continue;
        const r = await runPhase(`read ${label} c=${c}`, c, DURATION_MS, async (_w, i) => {
          await readBlob(primary, written[i % written.length]!);
        });
        results.push(r);
        process.stderr.write(`${r.name}: ${r.opsPerSec.toFixed(0)}/s\n`);
      }
    }
  }
} finally {
  await Promise.all(stores.map((s) => s.stop()));
  rmSync(root, { recursive: true, force: true });
}
process.stdout.write(
  `\n## Store benchmark (${new Date().toISOString()}, ${DURATION_MS} ms per phase)\n\n${table(results)}\n`,
);
