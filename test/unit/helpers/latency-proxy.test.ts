import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { LatencyRelay, type LatencyRelayOptions, startRelayProcess } from '../../netns/latency-proxy.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A target server on 127.0.0.1 (any free port) whose accepted sockets `onConn` gets. */
async function target(onConn: (s: net.Socket) => void): Promise<net.Server> {
  const srv = net.createServer({ allowHalfOpen: true }, onConn);
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return srv;
}

const portOf = (srv: net.Server) => (srv.address() as net.AddressInfo).port;

/** Everything `s` sends until its FIN. */
function readAll(s: net.Socket): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on('data', (d: Buffer) => parts.push(d));
  return new Promise((resolve, reject) => {
    s.once('end', () => resolve(Buffer.concat(parts)));
    s.once('error', reject);
  });
}

/** The time (performance.now) the first byte arrives on `s`. */
const firstByte = (s: net.Socket) =>
  new Promise<number>((resolve) => s.once('data', () => resolve(performance.now())));

describe('LatencyRelay (the netns latency fault)', () => {
  const cleanup: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });

  async function relayTo(srv: net.Server, o: Partial<LatencyRelayOptions> = {}): Promise<LatencyRelay> {
    const r = await LatencyRelay.start({
      listen: { host: '127.0.0.1', port: 0 },
      target: { host: '127.0.0.1', port: portOf(srv) },
      delayMs: 80,
      ...o,
    });
    cleanup.push(() => r.close());
    return r;
  }

  async function connect(r: LatencyRelay): Promise<net.Socket> {
    const c = net.connect({ ...r.address, allowHalfOpen: true });
    cleanup.push(() => void c.destroy());
    await once(c, 'connect');
    return c;
  }

  it('holds every byte ≥ the delay each way, and delivers them unchanged and in order (with jitter)', async () => {
    const up = randomBytes(3 * 1024 * 1024 + 17);
    const down = randomBytes(2 * 1024 * 1024 + 5);
    let onAccept: (s: net.Socket) => void = () => {};
    const accepted = new Promise<net.Socket>((resolve) => {
      onAccept = resolve;
    });
    const srv = await target((s) => onAccept(s));
    cleanup.push(() => void srv.close());
    const r = await relayTo(srv, { delayMs: 80, jitterMs: 30 });
    const c = await connect(r);
    const s = await accepted;

    // One way, client → target: a single byte, timed.
    const arrivedUp = firstByte(s);
    const sentUp = performance.now();
    c.write(up.subarray(0, 1));
    const upMs = (await arrivedUp) - sentUp;
    // And back.
    const arrivedDown = firstByte(c);
    const sentDown = performance.now();
    s.write(down.subarray(0, 1));
    const downMs = (await arrivedDown) - sentDown;
    expect(upMs).toBeGreaterThanOrEqual(80);
    expect(downMs).toBeGreaterThanOrEqual(80);

    // The rest in many writes both ways at once; FINs relayed after the data.
    const gotUp = readAll(s);
    const gotDown = readAll(c);
    for (let i = 1; i < up.length; i += 50_000) c.write(up.subarray(i, i + 50_000));
    c.end();
    for (let i = 1; i < down.length; i += 30_000) s.write(down.subarray(i, i + 30_000));
    s.end();
    expect(sha(Buffer.concat([up.subarray(0, 1), await gotUp]))).toBe(sha(up));
    expect(sha(Buffer.concat([down.subarray(0, 1), await gotDown]))).toBe(sha(down));
    expect(r.stats.up.bytes).toBe(up.length);
    expect(r.stats.down.bytes).toBe(down.length);
    expect(r.stats.up.minHeldMs).toBeGreaterThanOrEqual(80);
    expect(r.stats.down.minHeldMs).toBeGreaterThanOrEqual(80);
    expect(Object.values(r.stats.upBySource)).toEqual([up.length]);
  });

  it('pauses the writer at the cap while the reader does not read, then delivers everything', async () => {
    const cap = 256 * 1024;
    const data = randomBytes(24 * 1024 * 1024);
    let serverSock: net.Socket | undefined;
    const srv = await target((s) => {
      serverSock = s;
      s.pause(); // a reader that does not read
    });
    cleanup.push(() => void srv.close());
    const r = await relayTo(srv, { delayMs: 5, maxPendingBytes: cap });
    const c = await connect(r);
    c.write(data);
    c.end();
    await new Promise((res) => setTimeout(res, 1500));
    const stalled = r.stats.up.bytes;
    // Held by the relay: the cap plus one read at most, however much the writer has.
    expect(r.stats.up.peakPendingBytes).toBeLessThanOrEqual(cap + 64 * 1024);
    expect(r.stats.up.pauses).toBeGreaterThan(0);
    // What got through sits in the kernel's buffers; the rest waits at the writer.
    expect(stalled).toBeLessThan(data.length / 2);
    expect(c.writableLength).toBeGreaterThan(0);
    const s = serverSock as net.Socket;
    const got = readAll(s);
    s.resume();
    expect(sha(await got)).toBe(sha(data));
    expect(r.stats.up.peakPendingBytes).toBeLessThanOrEqual(cap + 64 * 1024);
  });

  it('relays a FIN each way after the data, and a reset at once; no connection left open', async () => {
    const conns: net.Socket[] = [];
    const srv = await target((s) => {
      conns.push(s);
      s.on('error', () => {});
    });
    cleanup.push(() => void srv.close());
    const r = await relayTo(srv, { delayMs: 50 });

    // Half-close from the client, then from the server: both ends see the FIN and close.
    const c = await connect(r);
    await until(() => conns.length === 1);
    const s = conns[0] as net.Socket;
    const serverGot = readAll(s);
    c.end(Buffer.from('bye'));
    expect((await serverGot).toString()).toBe('bye');
    const clientGot = readAll(c);
    const bothClosed = Promise.all([once(c, 'close'), once(s, 'close')]);
    s.end(Buffer.from('ok'));
    expect((await clientGot).toString()).toBe('ok');
    await bothClosed;
    await until(() => r.stats.open === 0);

    // A reset by the server resets the client.
    const c2 = await connect(r);
    c2.on('error', () => {});
    const c2Closed = closed(c2);
    await until(() => conns.length === 2);
    (conns[1] as net.Socket).resetAndDestroy();
    await c2Closed;
    await until(() => r.stats.open === 0);

    // A target that refuses: the client is reset, not left hanging.
    const dead = await target(() => {});
    const deadPort = portOf(dead);
    await new Promise((res) => dead.close(res));
    const r2 = await relayTo(srv, { target: { host: '127.0.0.1', port: deadPort } });
    const c3 = net.connect({ ...r2.address, allowHalfOpen: true });
    cleanup.push(() => void c3.destroy());
    c3.on('error', () => {});
    await closed(c3);
    await until(() => r2.stats.open === 0);

    // close() closes both sides of what is still relayed.
    const c4 = await connect(r);
    await until(() => conns.length === 3);
    const s4 = conns[2] as net.Socket;
    // Half-open sockets (allowHalfOpen) see the FIN as 'end'.
    const closedBoth = Promise.all([readAll(c4), readAll(s4)]);
    await r.close();
    await closedBoth;
    expect(r.stats.open).toBe(0);
    expect(r.stats.accepted).toBe(3);
  });

  it('runs as a child process (as in a namespace): reports its counters, stops on SIGTERM', async () => {
    const srv = await target((s) => s.pipe(s));
    cleanup.push(() => void srv.close());
    const p = await startRelayProcess([], {
      listen: '127.0.0.1:0',
      target: `127.0.0.1:${portOf(srv)}`,
      delayMs: 60,
    });
    cleanup.push(() => p.stop());
    const [host, port] = p.listen.split(':') as [string, string];
    const c = net.connect({ host, port: Number(port) });
    cleanup.push(() => void c.destroy());
    await once(c, 'connect');
    const echoed = firstByte(c);
    const t0 = performance.now();
    c.write('ping');
    expect((await echoed) - t0).toBeGreaterThanOrEqual(120);
    const s = await p.freshStats();
    expect(s.up.bytes).toBe(4);
    expect(s.down.bytes).toBe(4);
    expect(s.up.minHeldMs).toBeGreaterThanOrEqual(60);
    expect(s.upBySource).toEqual({ '127.0.0.1': 4 });
    const ended = readAll(c);
    await p.stop();
    await ended;
    expect(p.child.exitCode).toBe(0);
  });
});

/** Resolves on 'close', whatever error came first (events.once would reject on it). */
const closed = (s: net.Socket) => new Promise<void>((resolve) => s.once('close', () => resolve()));

async function until(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met within 10 s');
    await new Promise((r) => setTimeout(r, 10));
  }
}
