// npm run bench:upload-memory — how much memory a gateway needs for large uploads:
// starts the bench cluster (bench/target.ts; uploads up to --max-upload allowed at
// Envoy and the gateways), then runs --uploads concurrent uploads of --size each
// through Envoy with the SDK, streamed from a generator in 1 MiB pieces (the client
// never holds a whole blob), and samples every gateway's and store's RSS every
// 100 ms from /proc. Prints the RSS before, the peak and the mean during the uploads,
// and the peak minus the baseline per process role.
// Goal (issue 11): the gateway's peak is bounded by a few chunk buffers, not by the
// upload size.
//
// Two upload paths, one after the other (--mode): `stream` (the Node SDK's Upload
// stream, 256 KiB messages) and `unary` (what the browser SDK sends: one Put message
// holding the whole blob; the client gathers it first). A Put above the gateways'
// MAX_PUT_SIZE (16MiB) is refused with RESOURCE_EXHAUSTED before it is read, so
// `unary` at the default --size shows the refusal and the gateway staying flat;
// --env MAX_PUT_SIZE=... raises the bound.
// Flags: --uploads (4), --size (200MiB), --max-upload (256MiB), --mode (stream,unary),
// --env KEY=VALUE (repeatable; environment for our servers, e.g. PLACEMENT_GROUPS=256),
// --out (bench/results).
import { createHash } from 'node:crypto';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { HaystackClient } from '../internal/sdk/index.js';
import { machine } from './report.js';
import { mib, RssSampler, rssBytes, type Watched } from './rss.js';
import { loadAverageLine, writeRunFiles } from './run-files.js';
import { localTarget, parseEnvFlags, type Target } from './target.js';
import { parseSizes, payload, sizeLabel } from './workload.js';

const { values: flags } = parseArgs({
  options: {
    uploads: { type: 'string', default: '4' },
    size: { type: 'string', default: '200MiB' },
    'max-upload': { type: 'string', default: '256MiB' },
    mode: { type: 'string', default: 'stream,unary' },
    env: { type: 'string', multiple: true, default: [] },
    out: { type: 'string', default: 'bench/results' },
  },
});
const modes = (flags.mode as string).split(',');
for (const m of modes)
  if (m !== 'stream' && m !== 'unary') throw new Error(`--mode: stream and/or unary, got ${m}`);
const uploads = Number(flags.uploads);
if (!Number.isInteger(uploads) || uploads < 1 || uploads > 64) throw new Error('--uploads: 1..64');
const size = parseSizes(flags.size as string)[0] as number;
const maxUpload = parseSizes(flags['max-upload'] as string)[0] as number;
if (size > maxUpload) throw new Error(`--size ${size} is larger than --max-upload ${maxUpload}`);
const PIECE = 1024 * 1024;

/**
 * `n` bytes in 1 MiB pieces, different for every `seed`, as a factory the SDK calls
 * again on a retry; `sha256()` is the digest of the last attempt's bytes (a digest
 * kept across attempts also hashed the failed ones' and never matched).
 */
function source(n: number, seed: number) {
  let hash = createHash('sha256');
  const open = async function* () {
    hash = createHash('sha256');
    for (let off = 0, i = 0; off < n; off += PIECE, i++) {
      const piece = payload(Math.min(PIECE, n - off), (seed * 100_003 + i) >>> 0);
      hash.update(piece);
      yield piece;
    }
  };
  return { open, sha256: () => hash.digest('hex') };
}

let t: Target | undefined;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => void (t?.close() ?? Promise.resolve()).finally(() => process.exit(130)));
}
const host = machine();
const upBefore = os.loadavg();
try {
  t = await localTarget({
    env: { ...parseEnvFlags(flags.env as string[]), MAX_UPLOAD_SIZE: String(maxUpload) },
    envoy: { maxUploadBytes: maxUpload },
  });
  const cluster = t.cluster;
  if (!cluster) throw new Error('no local cluster');
  const watched = (): Watched[] =>
    (
      [
        ['gateway', cluster.gateways],
        ['store', cluster.stores],
      ] as const
    ).flatMap(([role, ps]) =>
      ps.flatMap((p) => (p.child.pid === undefined ? [] : [{ role, name: p.name, pid: p.child.pid }])),
    );
  const sections: string[] = [];
  const report: Record<string, unknown> = {};
  for (const mode of modes) {
    // The browser SDK sends an upload as one Put message; the Node SDK streams it.
    const client =
      mode === 'stream' ? t.client : new HaystackClient({ url: t.url, unaryUploads: true, retries: 0 });
    // Warm the path with one small upload, then take the baseline.
    await client.upload(payload(64 * 1024, 1 + modes.indexOf(mode)), { timeoutMs: 60_000 });
    const baseline = Object.fromEntries(watched().map((w) => [w.name, rssBytes(w.pid) ?? Number.NaN]));
    const sampler = new RssSampler(watched, 100);
    const t0 = performance.now();
    const settled = await Promise.allSettled(
      Array.from({ length: uploads }, async (_, k) => {
        const seed = k + 7 + 100 * modes.indexOf(mode);
        const src = source(size, seed);
        const b = await client.upload(src.open, { size, timeoutMs: 15 * 60_000 });
        const want = src.sha256();
        if (b.sha256 !== want) throw new Error(`upload ${k}: sha256 ${b.sha256}, sent ${want}`);
        return b.id;
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const figs = sampler.stop();
    const ok = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = settled.flatMap((r) => (r.status === 'rejected' ? [String(r.reason).split('\n')[0]] : []));
    const peaks = sampler.peakByName;
    sections.push(
      `## ${mode === 'stream' ? 'Streamed upload (Node SDK: Upload stream, 256 KiB messages)' : 'Unary upload (browser SDK: one Put message; above MAX_PUT_SIZE the gateway answers RESOURCE_EXHAUSTED from the length prefix, before reading it)'}`,
      '',
      `${uploads} × ${sizeLabel(size)} through Envoy, ${seconds.toFixed(1)} s` +
        (ok.length ? ` (${((ok.length * size) / seconds / 1024 ** 2).toFixed(0)} MiB/s)` : '') +
        `; ${ok.length} stored${failed.length ? `, ${failed.length} failed: ${[...new Set(failed)].join('; ')}` : ''}.`,
      '',
      '| process | RSS before | peak during | peak − before |',
      '|---|---:|---:|---:|',
      ...[...peaks.entries()].map(
        ([name, peak]) =>
          `| ${name} | ${mib(baseline[name] ?? Number.NaN)} | ${mib(peak)} | ${mib(peak - (baseline[name] ?? Number.NaN))} |`,
      ),
      '',
      '| role | processes | peak | mean |',
      '|---|---:|---:|---:|',
      ...figs.map((f) => `| ${f.role} | ${f.processes} | ${mib(f.peakBytes)} | ${mib(f.meanBytes)} |`),
      '',
    );
    report[mode] = {
      seconds,
      stored: ok,
      failed,
      baselineBytes: baseline,
      peakBytes: Object.fromEntries(peaks),
      roles: figs,
    };
  }
  const lines = [
    `# Gateway memory under ${uploads} concurrent ${sizeLabel(size)} uploads — ${new Date().toISOString()}`,
    '',
    `Streamed from a generator in 1 MiB pieces on the client; RSS from /proc every 100 ms. The SDK keeps one HTTP/2 connection to Envoy, so concurrent uploads tend to land on one gateway.`,
    '',
    ...sections,
    loadAverageLine(upBefore),
    '',
  ];
  const md = lines.join('\n');
  const files = writeRunFiles(
    flags.out as string,
    'upload-memory',
    host,
    { uploads, sizeBytes: size, ...report },
    md,
  );
  process.stdout.write(`${md}\nwrote ${files.json} and ${files.md}\n`);
} finally {
  await t?.close();
}
