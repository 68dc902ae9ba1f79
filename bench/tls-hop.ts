// npm run bench:tls-hop — the CPU one hop's TLS adds to a 64 KiB message, apart
// from everything else a cluster does: 32 MiB in 64 KiB writes through one
// loopback connection (both ends in this process), plain TCP against TLS 1.3
// with each suite the mesh offers (internal/security/tls-config.ts), the mesh's
// own certificates. Rounds alternate the modes; the minimum and median of the
// rounds are printed (CPU time, not wall time: less sensitive to a shared box).
//
// Flags: --rounds (15), --mib per round (32).
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { TLS13_SUITES } from '../internal/security/tls-config.js';
import { securityOf } from '../test/helpers/pki.js';

const { values: flags } = parseArgs({
  options: { rounds: { type: 'string', default: '15' }, mib: { type: 'string', default: '32' } },
});
const rounds = Number(flags.rounds);
const total = Number(flags.mib) * 1024 * 1024;
const chunk = Buffer.alloc(64 * 1024, 5);
const writes = total / chunk.length;

const security = await securityOf({ role: 'store', id: 'bench' });
if (security.mode !== 'mtls') throw new Error('no test PKI');
const pem: { cert: string; key: string; ca: string } = security;

/** µs of CPU (both ends) per 64 KiB sent through one connection of `mode` ('tcp' or a TLS 1.3 suite). */
async function round(mode: string): Promise<number> {
  const onSocket = (sock: net.Socket) => {
    let n = 0;
    sock.on('data', (d: Buffer) => {
      n += d.length;
      if (n >= total) sock.end();
    });
  };
  const server =
    mode === 'tcp'
      ? net.createServer(onSocket)
      : tls.createServer({ cert: pem.cert, key: pem.key, ciphers: mode, minVersion: 'TLSv1.3' }, onSocket);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  const client =
    mode === 'tcp'
      ? net.connect(port, '127.0.0.1')
      : tls.connect({
          port,
          host: '127.0.0.1',
          ca: pem.ca,
          ciphers: mode,
          checkServerIdentity: () => undefined,
        });
  await new Promise((r) => client.once(mode === 'tcp' ? 'connect' : 'secureConnect', r));
  if (client instanceof tls.TLSSocket && client.getCipher().name !== mode) {
    throw new Error(`asked for ${mode}, got ${client.getCipher().name}`);
  }
  const t0 = process.cpuUsage();
  for (let i = 0; i < writes; i++) {
    if (!client.write(chunk)) await new Promise((r) => client.once('drain', r));
  }
  await new Promise((r) => client.once('end', r));
  const used = process.cpuUsage(t0);
  client.destroy();
  server.close();
  return (used.user + used.system) / writes;
}

const modes = ['tcp', ...TLS13_SUITES];
const results = new Map<string, number[]>(modes.map((m) => [m, []]));
for (let r = 0; r < rounds; r++) {
  for (const m of modes) results.get(m)?.push(await round(m));
}
const load = (await import('node:os')).loadavg().map((l) => l.toFixed(1));
process.stdout.write(
  `CPU µs per 64 KiB through one loopback connection (both ends), ${rounds} rounds, load ${load}\n`,
);
for (const [m, v] of results) {
  v.sort((a, b) => a - b);
  const med = v[Math.floor(v.length / 2)] ?? Number.NaN;
  process.stdout.write(`${m.padEnd(30)} min ${(v[0] ?? Number.NaN).toFixed(1)}  median ${med.toFixed(1)}\n`);
}
