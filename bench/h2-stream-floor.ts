// npm run bench:h2-floor — the floor node:http2 puts under a replicated write, with no gRPC
// layer of ours: CPU per 1 KiB request + 20-byte answer when every request opens its own
// HTTP/2 stream (HEADERS, DATA, trailers: what a Write RPC per replica costs at the least)
// against length-prefixed messages on one long-lived stream (what a replication stream per
// store pair would cost). Plaintext h2c on 127.0.0.1, the server in a child process; CPU from
// process.cpuUsage (client) and /proc/<pid>/stat (server, 10 ms ticks). Compare with
// `npm run bench:transport` (the direct gRPC path's per-call cost) — docs/benchmarks.md.
//
// Flags: --concurrency (16), --writes per round (20000), --rounds (3; the first is not reported).
import { fork } from 'node:child_process';
import http2 from 'node:http2';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { processCpuSeconds } from './cpu.js';

const ANSWER = Buffer.alloc(20);

/** The child: /one answers each stream; /long acks every length-prefixed message with its id. */
function serve(): void {
  const server = http2.createServer();
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    if (headers[':path'] === '/one') {
      stream.on('data', () => {});
      stream.on('end', () => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        stream.end(ANSWER);
      });
      return;
    }
    stream.respond({ ':status': 200 });
    let pending: Buffer = Buffer.alloc(0);
    stream.on('data', (chunk: Buffer) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      for (;;) {
        if (pending.length < 8) break;
        const n = pending.readUInt32BE(0);
        if (pending.length < 4 + n) break;
        const ack = Buffer.alloc(8);
        ack.writeUInt32BE(4, 0);
        ack.writeUInt32BE(pending.readUInt32BE(4), 4);
        pending = pending.subarray(4 + n);
        stream.write(ack);
      }
    });
  });
  server.listen(0, '127.0.0.1', () => {
    const a = server.address();
    process.send?.(typeof a === 'object' && a ? a.port : 0);
  });
}

async function measure(): Promise<void> {
  const { values: flags } = parseArgs({
    options: {
      concurrency: { type: 'string', default: '16' },
      writes: { type: 'string', default: '20000' },
      rounds: { type: 'string', default: '3' },
    },
  });
  const C = Number(flags.concurrency);
  const N = Number(flags.writes);
  const ROUNDS = Math.max(2, Number(flags.rounds));
  const child = fork(fileURLToPath(import.meta.url), ['serve'], { execArgv: ['--import', 'tsx'] });
  const pid = child.pid as number;
  const port = await new Promise<number>((resolve) => child.once('message', (m) => resolve(Number(m))));
  const session = http2.connect(`http://127.0.0.1:${port}`);
  const payload = Buffer.alloc(1024, 1);
  const serverUs = () => (processCpuSeconds(pid) ?? Number.NaN) * 1e6;
  const clientUs = () => {
    const u = process.cpuUsage();
    return u.user + u.system;
  };
  const drive = async (op: () => Promise<void>) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: C }, async () => {
        while (next < N) {
          next++;
          await op();
        }
      }),
    );
  };

  const perStream = () =>
    new Promise<void>((resolve, reject) => {
      const s = session.request({
        ':method': 'POST',
        ':path': '/one',
        'content-type': 'application/grpc',
        te: 'trailers',
      });
      s.on('data', () => {});
      s.on('close', resolve);
      s.on('error', reject);
      s.end(payload);
    });

  const long = session.request({ ':method': 'POST', ':path': '/long' });
  const waiting = new Map<number, () => void>();
  let pending: Buffer = Buffer.alloc(0);
  long.on('data', (chunk: Buffer) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 8) {
      const id = pending.readUInt32BE(4);
      pending = pending.subarray(8);
      waiting.get(id)?.();
      waiting.delete(id);
    }
  });
  let seq = 0;
  const onLongStream = () =>
    new Promise<void>((resolve) => {
      const id = seq++;
      const head = Buffer.alloc(8);
      head.writeUInt32BE(4 + payload.length, 0);
      head.writeUInt32BE(id, 4);
      waiting.set(id, resolve);
      long.write(Buffer.concat([head, payload]));
    });

  const rows: string[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, op] of [
      ['a new stream per write', perStream],
      ['one long-lived stream', onLongStream],
    ] as const) {
      const c0 = clientUs();
      const s0 = serverUs();
      const t0 = performance.now();
      await drive(op);
      const secs = (performance.now() - t0) / 1000;
      if (r === 0) continue;
      rows.push(
        `| ${name} | ${r} | ${(N / secs).toFixed(0)} | ${((clientUs() - c0) / N).toFixed(1)} | ${((serverUs() - s0) / N).toFixed(1)} |`,
      );
    }
  }
  long.close();
  session.close();
  child.kill();
  process.stdout.write(
    `\n## node:http2 floor per 1 KiB write (${new Date().toISOString()}, concurrency ${C}, ${N} writes per round)\n\n` +
      '| how | round | writes/s | client CPU µs | server CPU µs |\n|---|---:|---:|---:|---:|\n' +
      `${rows.join('\n')}\n`,
  );
}

if (process.argv[2] === 'serve') serve();
else await measure();
