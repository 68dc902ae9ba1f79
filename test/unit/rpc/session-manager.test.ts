import { spawn } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PeerSessionManager } from '../../../internal/rpc/session-manager.js';

/**
 * A TCP relay between the manager and an HTTP/2 server whose connections can be
 * frozen one by one (bytes stop flowing both ways, so PINGs go unanswered) or
 * reset (RST, as from a peer killed or restarted).
 */
class Relay {
  readonly conns: net.Socket[] = [];
  private readonly frozen = new Set<net.Socket>();
  /** Connections whose PING acknowledgements are held this long (ms; Infinity: dropped). */
  private readonly ackDelay = new Map<net.Socket, number>();
  private readonly server: net.Server;
  constructor(target: number) {
    this.server = net.createServer((c) => {
      const u = net.connect(target, '127.0.0.1');
      c.on('error', () => {});
      u.on('error', () => {});
      c.on('data', (d) => this.frozen.has(c) || u.write(d));
      // The server's side is cut into HTTP/2 frames (9-byte header, RFC 9113 §4.1), so
      // PING acknowledgements can be dropped one by one.
      let pending = Buffer.alloc(0);
      u.on('data', (d) => {
        if (this.frozen.has(c)) return;
        pending = Buffer.concat([pending, d]);
        while (pending.length >= 9) {
          const size = 9 + pending.readUIntBE(0, 3);
          if (pending.length < size) break;
          const frame = pending.subarray(0, size);
          pending = pending.subarray(size);
          const pingAck = frame[3] === 0x6 && ((frame[4] ?? 0) & 0x1) === 1;
          const delay = pingAck ? (this.ackDelay.get(c) ?? 0) : 0;
          if (delay === 0) c.write(frame);
          else if (delay !== Number.POSITIVE_INFINITY) setTimeout(() => c.write(frame), delay);
        }
      });
      c.on('close', () => u.destroy());
      u.on('close', () => c.destroy());
      this.conns.push(c);
    });
  }
  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }
  freeze(c: net.Socket): void {
    this.frozen.add(c);
  }
  /** Drops the server's PING acknowledgements on `c`; every other frame still flows. */
  dropPingAcks(c: net.Socket): void {
    this.ackDelay.set(c, Number.POSITIVE_INFINITY);
  }
  /** Holds the server's PING acknowledgements on `c` for `ms`. */
  delayPingAcks(c: net.Socket, ms: number): void {
    this.ackDelay.set(c, ms);
  }
  resetAll(): void {
    for (const c of this.conns) if (!c.destroyed) c.resetAndDestroy();
  }
  close(): Promise<void> {
    this.resetAll();
    return new Promise((r) => this.server.close(() => r()));
  }
}

/**
 * A loopback port whose SYNs the kernel drops, as in a partition: a listener with
 * backlog 0 that never accepts (Python's: Node accepts by itself), its one queue slot
 * taken by a first connection.
 */
async function synDroppingPort(): Promise<{ port: number; close: () => void }> {
  const py = spawn('python3', [
    '-u',
    '-c',
    "import socket,time\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(600)",
  ]);
  const port = Number(await new Promise<string>((r) => py.stdout.once('data', (d) => r(String(d)))));
  const filler = net.connect(port, '127.0.0.1');
  filler.on('error', () => {});
  await new Promise((r) => filler.once('connect', r));
  return {
    port,
    close: () => {
      filler.destroy();
      py.kill();
    },
  };
}

/** Runs a TypeScript file in a child Node (killed after 30 s): its exit status and output. */
async function runScript(file: string): Promise<{ status: number | null; out: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', file], {
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 30_000,
  });
  let out = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    out += d;
  });
  const status = await new Promise<number | null>((r) => child.once('close', r));
  return { status, out: out.trim() };
}

/** How `p` settled, with the time from `t0`; 'pending' if not within `ms`. */
async function settled(
  p: Promise<unknown>,
  ms: number,
  t0: number,
): Promise<{ error: string; ms: number } | 'resolved' | 'pending'> {
  return Promise.race([
    p.then(
      () => 'resolved' as const,
      (e: unknown) => ({ error: String(e), ms: Date.now() - t0 }),
    ),
    new Promise<'pending'>((r) => setTimeout(() => r('pending'), ms)),
  ]);
}

/** A GET that resolves when its stream closes, with the stream. */
async function get(m: PeerSessionManager): Promise<http2.ClientHttp2Stream> {
  const s = await m.request('GET', '/', {}, {});
  s.on('error', () => {});
  s.resume();
  s.end();
  await new Promise((r) => s.once('close', r));
  return s;
}

function until(cond: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const poll = () => (cond() ? resolve() : setImmediate(poll));
    poll();
  });
}

describe('PeerSessionManager', () => {
  let server: http2.Http2Server;
  let port: number;
  let relay: Relay;
  let url: string;
  const uncaught: unknown[] = [];
  const serverSockets = new Set<net.Socket>();
  const onUncaught = (e: unknown) => uncaught.push(e);
  beforeAll(async () => {
    server = http2.createServer((req, res) => {
      if (req.url === '/hold') {
        // Answers once the request has ended: the stream stays open until the client ends it.
        req.resume();
        req.on('end', () => res.end('done'));
        return;
      }
      if (req.url !== '/drip') return void res.end('ok');
      // 40 chunks, one every 50 ms: a response that keeps arriving for two seconds.
      let n = 0;
      const t = setInterval(() => {
        res.write(Buffer.alloc(100));
        if (++n === 40) {
          clearInterval(t);
          res.end();
        }
      }, 50);
      res.on('close', () => clearInterval(t));
    });
    server.on('sessionError', () => {});
    server.on('connection', (s: net.Socket) => {
      s.on('error', () => {});
      serverSockets.add(s);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as net.AddressInfo).port;
    process.prependListener('uncaughtException', onUncaught);
  });
  afterEach(async () => {
    await relay?.close();
  });
  afterAll(async () => {
    process.off('uncaughtException', onUncaught);
    for (const s of serverSockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });

  /** A manager with one session, through a new relay that drops its PING acknowledgements. */
  async function deafSession(options: ConstructorParameters<typeof PeerSessionManager>[1]) {
    relay = new Relay(port);
    url = await relay.listen();
    const m = new PeerSessionManager(url, options);
    await get(m);
    const [c1] = relay.conns;
    if (!c1) throw new Error('no connection');
    relay.dropPingAcks(c1);
    return m;
  }

  /** Runs `body` through a new relay, with the server sessions opened meanwhile, in order. */
  async function viaRelayWithServerSessions(body: (sessions: http2.ServerHttp2Session[]) => Promise<void>) {
    relay = new Relay(port);
    url = await relay.listen();
    const sessions: http2.ServerHttp2Session[] = [];
    const onSession = (s: http2.ServerHttp2Session) => sessions.push(s);
    server.on('session', onSession);
    try {
      await body(sessions);
    } finally {
      server.off('session', onSession);
    }
  }

  // The network-fault suite lost two directories at once to this: connect-node's
  // Http2SessionManager, on a failed verification PING, dialled a second session over
  // the one a concurrent request had just dialled, leaving that one without listeners
  // (its reset threw "Unhandled 'error' event") and its request waiting forever.
  it('a request during a failing verification PING is served, and no session is left without an error listener', async () => {
    relay = new Relay(port);
    url = await relay.listen();
    const m = new PeerSessionManager(url, { pingIntervalMs: 50, pingTimeoutMs: 100 });
    const first = await m.request('GET', '/', {}, {});
    const s1 = first.session;
    expect(s1).toBeDefined();
    first.resume();
    first.end();
    await new Promise((r) => first.once('close', r));
    await new Promise((r) => setTimeout(r, 120)); // silent past pingIntervalMs: the next request PINGs first
    const [c1] = relay.conns;
    if (!c1 || !s1) throw new Error('no first connection');
    relay.freeze(c1);
    const b = get(m).then(
      () => 'served',
      () => 'failed',
    );
    // The PING times out and destroys s1; before s1 emits its error, another request.
    await until(() => s1.destroyed);
    const c = get(m);
    expect(await b).toBe('served');
    expect((await c).rstCode).toBe(http2.constants.NGHTTP2_NO_ERROR);
    const dialled = relay.conns.length;
    relay.resetAll();
    await until(() => relay.conns.every((x) => x.destroyed));
    await new Promise((r) => setTimeout(r, 50));
    expect(uncaught).toEqual([]);
    expect(dialled).toBeGreaterThanOrEqual(2);
    // And it dials again after every connection was reset.
    expect((await get(m)).rstCode).toBe(http2.constants.NGHTTP2_NO_ERROR);
    m.abort();
  });

  it('fails the open streams of a session whose keepalive PING goes unanswered, UNAVAILABLE, and dials anew', async () => {
    relay = new Relay(port);
    url = await relay.listen();
    const m = new PeerSessionManager(url, { pingIntervalMs: 50, pingTimeoutMs: 100 });
    const open = await m.request('POST', '/', {}, {}); // no end: the stream stays open
    const failed = new Promise<Error>((r) => open.once('error', r));
    const [c1] = relay.conns;
    if (!c1) throw new Error('no connection');
    relay.freeze(c1);
    const err = await failed;
    expect(err.message).toMatch(/PING timed out/);
    expect(open.session).toBeUndefined();
    expect((await get(m)).rstCode).toBe(http2.constants.NGHTTP2_NO_ERROR);
    expect(relay.conns.length).toBe(2);
    m.abort();
  });

  // At load 30–40 a peer can take seconds to answer a PING while its responses keep
  // flowing: that connection works (grpc-go's keepalive judges it the same way).
  it('keeps a session whose PINGs go unanswered while response bytes keep arriving', async () => {
    const m = await deafSession({ pingIntervalMs: 50, pingTimeoutMs: 700 });
    const drip = await m.request('GET', '/drip', {}, {});
    drip.end();
    let bytes = 0;
    drip.on('data', (d: Buffer) => {
      bytes += d.length;
      m.notifyResponseByteRead(drip); // as connect-node's client does
    });
    const outcome = await new Promise<string>((r) => {
      drip.once('error', (e) => r(e.message));
      drip.once('close', () => r(`closed, rst ${drip.rstCode}`));
    });
    expect(outcome).toBe(`closed, rst ${http2.constants.NGHTTP2_NO_ERROR}`);
    expect(bytes).toBe(4000);
    expect(relay.conns.length).toBe(1);
    // Silent again, the unanswered PING ends it.
    const open = await m.request('POST', '/hold', {}, {});
    const failed = await new Promise<Error>((r) => open.once('error', r));
    expect(failed.message).toMatch(/PING timed out/);
    expect(m.sessionCount()).toBe(0);
    m.abort();
  });

  // Node closes a session when GOAWAY arrives and cannot PING it any more; a PING already
  // out must still be judged, or the streams finishing on it would wait on a dead peer.
  it("fails the streams finishing on a GOAWAY'd session whose outstanding PING goes unanswered", async () => {
    await viaRelayWithServerSessions(async (sessions) => {
      const m = new PeerSessionManager(url, { pingIntervalMs: 50, pingTimeoutMs: 300 });
      const open = await m.request('POST', '/hold', {}, {}); // open until the client ends it
      const failed = new Promise<Error>((r) => open.once('error', r));
      await until(() => open.id !== undefined && sessions.length === 1);
      const [c1] = relay.conns;
      if (!c1) throw new Error('no connection');
      relay.dropPingAcks(c1); // the next PING stays out
      await new Promise((r) => setTimeout(r, 100));
      let goaway = false;
      open.session?.once('goaway', () => {
        goaway = true;
      });
      sessions[0]?.goaway(http2.constants.NGHTTP2_NO_ERROR, open.id); // graceful: open may finish
      await until(() => goaway);
      relay.freeze(c1); // then the peer goes silent
      expect((await failed).message).toMatch(/PING timed out/);
      expect(m.sessionCount()).toBe(0);
      m.abort();
    });
  });

  // After this process stalls, timers run before the socket is read: a PING answered
  // during the stall must not be judged unanswered. The manager runs in a child process,
  // which stalls; this process answers.
  it('does not take a stall of its own process for an unanswered PING', async () => {
    relay = new Relay(port);
    url = await relay.listen();
    const file = join(tmpdir(), `haystack-stall-child-${process.pid}.mts`);
    writeFileSync(
      file,
      `import { PeerSessionManager } from ${JSON.stringify(join(process.cwd(), 'internal/rpc/session-manager.ts'))};
      const m = new PeerSessionManager(${JSON.stringify(url)}, { pingIntervalMs: 50, pingTimeoutMs: 200 });
      const open = await m.request('POST', '/hold', {}, {});
      let failure = '';
      open.on('error', (e) => { failure = e.message; });
      open.resume();
      await new Promise((r) => setTimeout(r, 100)); // the stream is open (its answer waits for its end)
      const session = open.session;
      const ping = session.ping.bind(session);
      let stalls = 0;
      const stall = () => { const until = Date.now() + 500; while (Date.now() < until); };
      session.ping = (cb) => {
        const sent = ping(cb);
        // Block the event loop past pingTimeoutMs: three times once the PING is on the
        // wire, twice before Node has written it (in the same tick).
        if (stalls < 3) setImmediate(stall);
        else if (stalls < 5) stall();
        stalls++;
        return sent;
      };
      await new Promise((r) => setTimeout(r, 3000));
      console.log(failure || (open.destroyed ? 'destroyed' : 'open after ' + stalls + ' stalls'));
      m.abort();`,
    );
    try {
      expect(await runScript(file)).toMatchObject({
        status: 0,
        out: expect.stringMatching(/^open after \d+ stalls$/),
      });
    } finally {
      rmSync(file, { force: true });
    }
  });

  // A peer reading a large upload sends no response yet, only WINDOW_UPDATEs: alive.
  it('keeps a session whose PINGs go unanswered while the peer reads an upload and answers nothing yet', async () => {
    const m = await deafSession({ pingIntervalMs: 50, pingTimeoutMs: 400 });
    const up = await m.request('POST', '/hold', {}, {});
    up.resume();
    const outcome = new Promise<string>((r) => {
      up.once('error', (e) => r(e.message));
      up.once('close', () => r(`closed, rst ${up.rstCode}`));
    });
    // 16 KiB every 20 ms for 2 s: each needs the server's WINDOW_UPDATEs to go on.
    for (let i = 0; i < 100 && !up.destroyed; i++) {
      up.write(Buffer.alloc(16 * 1024));
      await new Promise((r) => setTimeout(r, 20));
    }
    up.end();
    expect(await outcome).toBe(`closed, rst ${http2.constants.NGHTTP2_NO_ERROR}`);
    expect(relay.conns.length).toBe(1);
    m.abort();
  });

  it('fails a request waiting on a verification PING with the reason of an abort(), without dialling again', async () => {
    const m = await deafSession({ pingIntervalMs: 50, pingTimeoutMs: 5_000 });
    await new Promise((r) => setTimeout(r, 100)); // silent past pingIntervalMs: the next request PINGs first
    const waiting = m.request('GET', '/', {}, {});
    await new Promise((r) => setTimeout(r, 50));
    m.abort(new Error('shutting down'));
    await expect(waiting).rejects.toThrow('shutting down');
    expect(relay.conns.length).toBe(1);
    expect(m.sessionCount()).toBe(0);
  });

  it('forgets a session it closed for idleness at once, even when the peer never acknowledges the close', async () => {
    relay = new Relay(port);
    url = await relay.listen();
    const m = new PeerSessionManager(url, { idleConnectionTimeoutMs: 200 });
    await get(m);
    const [c1] = relay.conns;
    if (!c1) throw new Error('no connection');
    relay.freeze(c1);
    c1.pause(); // the close never gets through
    await until(() => m.sessionCount() === 0);
    expect(c1.destroyed).toBe(false);
    m.abort();
  });

  it('opens a new session after a GOAWAY and closes one idle past idleConnectionTimeoutMs', async () => {
    await viaRelayWithServerSessions(async (sessions) => {
      const m = new PeerSessionManager(url, { idleConnectionTimeoutMs: 200 });
      await get(m);
      sessions[0]?.goaway(http2.constants.NGHTTP2_NO_ERROR);
      await until(() => relay.conns[0]?.destroyed === true);
      await get(m);
      expect(relay.conns.length).toBe(2);
      // Idle past 200 ms: the manager closes it, and the next request dials a third.
      await until(() => relay.conns[1]?.destroyed === true);
      await get(m);
      expect(relay.conns.length).toBe(3);
      m.abort();
    });
  });

  // Node closes a session whose socket is still sending SYNs only when the kernel gives
  // up (about two minutes): destroying it is not enough to release the request.
  it('fails a dial whose SYNs are dropped after handshakeTimeoutMs, and at once on abort()', async () => {
    const peer = await synDroppingPort();
    try {
      const url = `http://127.0.0.1:${peer.port}`;
      const timed = new PeerSessionManager(url, { handshakeTimeoutMs: 300 });
      let t0 = Date.now();
      const first = await settled(timed.request('GET', '/', {}, {}), 10_000, t0);
      expect(first).toMatchObject({
        error: expect.stringMatching(/unavailable.*handshake did not finish within 300 ms/),
      });
      expect(timed.sessionCount()).toBe(0);
      const aborted = new PeerSessionManager(url);
      t0 = Date.now();
      const req = aborted.request('GET', '/', {}, {});
      await new Promise((r) => setTimeout(r, 100));
      aborted.abort();
      expect(await settled(req, 10_000, t0)).toMatchObject({ error: expect.stringMatching(/canceled/) });
      expect(aborted.sessionCount()).toBe(0);
    } finally {
      peer.close();
    }
  });

  // A request waiting on a verification PING is the process's only work when, e.g., a
  // CLI makes its second call: the unref'd idle session must not let the process exit.
  it('keeps the process alive while a request waits on its verification PING', async () => {
    relay = new Relay(port);
    url = await relay.listen();
    const file = join(tmpdir(), `haystack-verify-child-${process.pid}.mts`);
    writeFileSync(
      file,
      `import { PeerSessionManager } from ${JSON.stringify(join(process.cwd(), 'internal/rpc/session-manager.ts'))};
      const m = new PeerSessionManager(${JSON.stringify(url)}, { pingIntervalMs: 50 });
      async function get() {
        const s = await m.request('GET', '/', {}, {});
        s.resume(); s.end();
        await new Promise((r) => s.once('close', r));
      }
      await get();
      await new Promise((r) => setTimeout(r, 200));
      await get();
      // Again, with another call on the session ending while the verification PING waits.
      const other = await m.request('POST', '/hold', {}, {});
      other.on('error', () => {});
      other.resume();
      await new Promise((r) => setTimeout(r, 200));
      const waiting = get();
      await new Promise((r) => setImmediate(r));
      other.close();
      await waiting;
      console.log('all served');
      m.abort();`,
    );
    try {
      const run = runScript(file);
      // PINGs answered 300 ms late: the requests wait on their verification that long.
      while (relay.conns.length === 0) await new Promise((r) => setTimeout(r, 10));
      relay.delayPingAcks(relay.conns[0] as net.Socket, 300);
      expect(await run).toEqual({ status: 0, out: 'all served' });
    } finally {
      rmSync(file, { force: true });
    }
  });

  // Node emits a destroyed session's 'close' only once its socket has flushed: to a
  // peer that stopped reading, never. The manager forgets it when it destroys it.
  it('forgets a session its keepalive destroyed even when the socket cannot flush', async () => {
    relay = new Relay(port);
    url = await relay.listen();
    const m = new PeerSessionManager(url, { pingIntervalMs: 100, pingTimeoutMs: 200 });
    const open = await m.request('POST', '/', {}, {});
    const failed = new Promise<Error>((r) => open.once('error', r));
    const [c1] = relay.conns;
    if (!c1) throw new Error('no connection');
    relay.freeze(c1);
    c1.pause(); // and stop reading: the client's writes fill the socket
    const chunk = Buffer.alloc(1 << 20);
    for (let i = 0; i < 16; i++) open.write(chunk);
    expect((await failed).message).toMatch(/PING timed out/);
    expect(open.session).toBeUndefined();
    expect(m.sessionCount()).toBe(0);
    m.abort();
  });

  it('rejects a request whose dial fails, with the dial error', async () => {
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const free = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const m = new PeerSessionManager(`http://127.0.0.1:${free}`);
    await expect(m.request('GET', '/', {}, {})).rejects.toThrow(/ECONNREFUSED/);
    m.abort();
  });
});
