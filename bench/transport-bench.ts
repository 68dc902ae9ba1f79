// npm run bench:transport — per-call cost of the RPC stacks on this box: the
// hand-rolled direct gRPC path (internal/server/direct-grpc.ts on the server,
// internal/rpc/direct-transport.ts on the client) against connect-node and
// @grpc/grpc-js, for a unary call (StoreService.GetStats) and a streamed write
// (StoreService.Write: a header and one 64 KiB chunk). The server is a stub in its
// own process (bench/transport-server.ts: no storage work), so the figures are the
// stacks' own: calls/s at --concurrency, p50/p99, and CPU µs per call on the server
// (from /proc/<pid>/stat) and on the client (process.cpuUsage, this process).
//
// Flags: --duration s per measurement (5), --warmup s (1), --concurrency (16),
// --chunk bytes of the streamed write (65536), --out (bench/results), --mtls-only (the
// direct path with and without mTLS only).
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { createClient, type Transport } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import * as grpc from '@grpc/grpc-js';
import {
  StoreService,
  StoreServiceGetStatsResponseSchema,
  type WriteRequest,
  WriteRequestSchema,
  WriteResponseSchema,
} from '../gen/haystack/v1/store_pb.js';
import { createDirectGrpcTransport } from '../internal/rpc/direct-transport.js';
import { identityEnv, securityOf } from '../test/helpers/pki.js';
import { machine } from './report.js';
import { loadAverageLine, writeRunFiles } from './run-files.js';
import { type PhaseResult, runPhase } from './stats.js';

const { values: flags } = parseArgs({
  options: {
    duration: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '16' },
    chunk: { type: 'string', default: '65536' },
    out: { type: 'string', default: 'bench/results' },
    // Only the direct path with and without mTLS (issue 12's cost, repeated cheaply).
    'mtls-only': { type: 'boolean', default: false },
  },
});
const durationMs = 1000 * Number(flags.duration);
const warmupMs = 1000 * Number(flags.warmup);
const concurrency = Number(flags.concurrency);
const chunkBytes = Number(flags.chunk);
for (const [k, v] of Object.entries({ durationMs, warmupMs, concurrency, chunkBytes })) {
  if (!Number.isFinite(v) || v <= 0) throw new Error(`bad ${k}: ${v}`);
}

type ServerKind = 'haystack-direct' | 'haystack-direct-mtls' | 'haystack-connect' | 'grpc-js';
type ClientKind = 'direct' | 'direct-mtls' | 'connect-node' | 'grpc-js';
/** The pairs measured: the three stacks end to end, then the mixed ones that split client from server cost. */
const PAIRS: Array<[ClientKind, ServerKind]> = [
  ['direct', 'haystack-direct'],
  // The stores' path over mTLS as the cluster runs it (a gateway's certificate): the
  // per-call cost of mTLS against the row above (issue 12).
  ['direct-mtls', 'haystack-direct-mtls'],
  ['connect-node', 'haystack-connect'],
  ['grpc-js', 'grpc-js'],
  ['connect-node', 'haystack-direct'],
  ['grpc-js', 'haystack-direct'],
  ['direct', 'grpc-js'],
];

/** What one client needs: a unary call and a streamed write of one chunk. */
interface Caller {
  unary(): Promise<void>;
  write(chunk: Uint8Array): Promise<void>;
  close(): void;
}

function connectCaller(transport: Transport): Caller {
  const c = createClient(StoreService, transport);
  return {
    unary: async () => {
      await c.getStats({});
    },
    write: async (chunk) => {
      const r = await c.write(
        (async function* () {
          yield create(WriteRequestSchema, {
            msg: { case: 'header', value: { blobId: 'b', size: BigInt(chunk.length) } },
          });
          yield create(WriteRequestSchema, { msg: { case: 'chunk', value: chunk } });
        })(),
      );
      if (Number(r.size) !== chunk.length) throw new Error(`server counted ${r.size} bytes`);
    },
    close: () => {},
  };
}

function grpcJsCaller(address: string): Caller {
  const client = new grpc.Client(address, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 8 * 1024 * 1024,
    'grpc.max_send_message_length': 8 * 1024 * 1024,
  });
  const p = (m: string) => `/${StoreService.typeName}/${m}`;
  return {
    unary: () =>
      new Promise((resolve, reject) =>
        client.makeUnaryRequest(
          p('GetStats'),
          () => Buffer.alloc(0),
          (b: Buffer) => fromBinary(StoreServiceGetStatsResponseSchema, b),
          {},
          (err) => (err ? reject(err) : resolve()),
        ),
      ),
    write: (chunk) =>
      new Promise((resolve, reject) => {
        const call = client.makeClientStreamRequest(
          p('Write'),
          (m: WriteRequest) => Buffer.from(toBinary(WriteRequestSchema, m)),
          (b: Buffer) => fromBinary(WriteResponseSchema, b),
          (err, r) => {
            if (err) reject(err);
            else if (Number(r?.size) !== chunk.length) reject(new Error(`server counted ${r?.size} bytes`));
            else resolve();
          },
        );
        call.write(
          create(WriteRequestSchema, {
            msg: { case: 'header', value: { blobId: 'b', size: BigInt(chunk.length) } },
          }),
        );
        call.write(create(WriteRequestSchema, { msg: { case: 'chunk', value: chunk } }));
        call.end();
      }),
    close: () => client.close(),
  };
}

/** The bench's throwaway PKI (test/helpers/pki.ts): the server a store, the client a gateway. */
const pkiServerEnv = () => identityEnv({ role: 'store', id: 'bench' });
const pkiClient = () => securityOf({ role: 'gateway', id: 'bench-client' });

async function caller(kind: ClientKind, address: string): Promise<Caller> {
  if (kind === 'direct')
    return connectCaller(createDirectGrpcTransport({ address, security: { mode: 'plaintext' } }));
  if (kind === 'direct-mtls')
    return connectCaller(createDirectGrpcTransport({ address, security: await pkiClient() }));
  if (kind === 'connect-node') return connectCaller(createGrpcTransport({ baseUrl: `http://${address}` }));
  return grpcJsCaller(address);
}

const here = path.dirname(fileURLToPath(import.meta.url));

/** Starts the stub server in its own process; resolves with its port once it listens. */
async function startServer(kind: ServerKind): Promise<{ child: ChildProcess; port: number }> {
  const env = kind === 'haystack-direct-mtls' ? { ...process.env, ...(await pkiServerEnv()) } : process.env;
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(here, 'transport-server.ts'), kind], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env,
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${kind} server did not start in 60 s`));
    }, 60_000);
    let out = '';
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => {
      out += d;
      const m = /\{"port":(\d+)\}/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, port: Number(m[1]) });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${kind} server exited (${code}) before listening`));
    });
  });
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

/** CPU seconds (user + system) a process used so far, from /proc/<pid>/stat. */
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  // fields 14 (utime) and 15 (stime), counted from 1 with pid and comm as 1 and 2
  return (Number(rest[11]) + Number(rest[12])) / 100; // USER_HZ is 100 on Linux
}

interface Row {
  client: ClientKind;
  server: ServerKind;
  call: 'unary' | 'stream-write';
  result: PhaseResult;
  serverCpuUsPerCall: number;
  clientCpuUsPerCall: number;
}

async function measure(
  pid: number,
  name: string,
  op: () => Promise<void>,
): Promise<Omit<Row, 'client' | 'server' | 'call'>> {
  // Warm-up is inside runPhase; the CPU counters cover warm-up and window, so they
  // are divided by every call made (counted here), not only the measured ones.
  let calls = 0;
  const s0 = cpuSeconds(pid);
  const c0 = process.cpuUsage();
  const result = await runPhase(
    name,
    concurrency,
    durationMs,
    async () => {
      await op();
      calls++;
    },
    warmupMs,
  );
  const c = process.cpuUsage(c0);
  const s = cpuSeconds(pid) - s0;
  return {
    result,
    serverCpuUsPerCall: (s * 1e6) / calls,
    clientCpuUsPerCall: (c.user + c.system) / calls,
  };
}

const host = machine();
const uptimeBefore = os.loadavg();
const rows: Row[] = [];
const chunk = new Uint8Array(chunkBytes).fill(7);
const pairs = flags['mtls-only'] ? PAIRS.filter(([c]) => c.startsWith('direct')).slice(0, 2) : PAIRS;
for (const server of [...new Set(pairs.map(([, s]) => s))]) {
  const { child, port } = await startServer(server);
  try {
    for (const [client, srv] of pairs) {
      if (srv !== server) continue;
      const c = await caller(client, `127.0.0.1:${port}`);
      try {
        const pid = child.pid as number;
        const u = await measure(pid, `${client} → ${server} unary`, () => c.unary());
        rows.push({ client, server, call: 'unary', ...u });
        const w = await measure(pid, `${client} → ${server} write`, () => c.write(chunk));
        rows.push({ client, server, call: 'stream-write', ...w });
        process.stderr.write(
          `[transport] ${client} → ${server}: unary ${u.result.opsPerSec.toFixed(0)}/s, write ${w.result.opsPerSec.toFixed(0)}/s\n`,
        );
      } finally {
        c.close();
      }
    }
  } finally {
    await stopServer(child);
  }
}

const f = (v: number, d = 0) => (Number.isFinite(v) ? v.toFixed(d) : '–');
const md = [
  `# RPC stacks, per call — ${new Date().toISOString()}`,
  '',
  `${host.cpus} CPUs (${host.cpuModel}), Node ${host.node}; concurrency ${concurrency}, ${warmupMs / 1000} s warm-up + ${durationMs / 1000} s per row; ` +
    `unary = StoreService.GetStats, stream-write = StoreService.Write (header + one ${chunkBytes}-byte chunk); stub server in its own process. ` +
    'CPU µs/call: server from /proc/<pid>/stat (10 ms ticks), client this process.',
  '',
  '| client → server | call | calls/s | p50 ms | p99 ms | server CPU µs/call | client CPU µs/call | errors |',
  '|---|---|---:|---:|---:|---:|---:|---:|',
  ...rows.map(
    (r) =>
      `| ${r.client} → ${r.server} | ${r.call} | ${f(r.result.opsPerSec)} | ${f(r.result.p50ms, 2)} | ${f(r.result.p99ms, 2)} | ` +
      `${f(r.serverCpuUsPerCall)} | ${f(r.clientCpuUsPerCall)} | ${r.result.errors} |`,
  ),
  '',
  loadAverageLine(uptimeBefore),
  '',
].join('\n');
const files = writeRunFiles(
  flags.out as string,
  'transport',
  host,
  { concurrency, durationMs, warmupMs, chunkBytes, rows },
  md,
);
process.stdout.write(`${md}\nwrote ${files.json} and ${files.md}\n`);
process.exit(0);
