import { type ChildProcess, spawn } from 'node:child_process';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { PROJECT_ROOT } from '../../internal/cli/processes.js';
import { killOnExit } from '../../internal/common/child-reaper.js';

/** A host:port pair (IPv4 here: the namespaces' addresses or 127.0.0.1). */
export interface HostPort {
  host: string;
  port: number;
}

export interface LatencyRelayOptions {
  /** Where the relay accepts connections (port 0: any free one; see `address`). */
  listen: HostPort;
  /** Where each accepted connection is forwarded. */
  target: HostPort;
  /** Added one-way delay, ms, in each direction: every chunk is held at least this long. */
  delayMs: number;
  /** Extra delay per chunk, uniform in [0, jitterMs) ms; byte order is kept (default 0). */
  jitterMs?: number;
  /**
   * Cap on the bytes held per direction of a connection (queued plus in the outgoing
   * socket's buffer); the source is paused at the cap and resumed below it. The bound
   * actually held is the cap plus one read (≤ 64 KiB). Default 1 MiB.
   */
  maxPendingBytes?: number;
}

/** Counters of one direction, summed over connections. */
export interface DirectionStats {
  /** Bytes forwarded (written to the far side). */
  bytes: number;
  /** Chunks forwarded. */
  chunks: number;
  /** Shortest time a forwarded chunk was held, ms (Infinity before the first; -1 in JSON). */
  minHeldMs: number;
  /** Most bytes held at once by one connection in this direction. */
  peakPendingBytes: number;
  /** How often the source was paused at the cap. */
  pauses: number;
}

export interface RelayStats {
  /** Connections accepted, and still open. */
  accepted: number;
  open: number;
  /** Client → target, and target → client. */
  up: DirectionStats;
  down: DirectionStats;
  /** Bytes forwarded client → target, by the client's address (who used the relay). */
  upBySource: Record<string, number>;
}

const emptyDirection = (): DirectionStats => ({
  bytes: 0,
  chunks: 0,
  minHeldMs: Number.POSITIVE_INFINITY,
  peakPendingBytes: 0,
  pauses: 0,
});

/**
 * One direction of a relayed connection: every chunk read from `src` is written to
 * `dst` no earlier than `delayMs` (+ jitter) after it was read, in order; the FIN
 * follows the last chunk after the same delay. Bytes held (queue + `dst`'s write
 * buffer) above the cap pause `src`, so a slow reader slows the writer instead of
 * growing the relay's memory, as a real link's window would.
 */
class DelayedPipe {
  private readonly queue: { at: number; arrived: number; chunk: Buffer | null }[] = [];
  private queued = 0;
  private lastAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private draining = false;

  constructor(
    private readonly src: net.Socket,
    private readonly dst: net.Socket,
    private readonly o: { delayMs: number; jitterMs: number; cap: number },
    private readonly stats: DirectionStats,
    private readonly onBytes: (n: number) => void,
  ) {
    src.on('data', (chunk: Buffer) => this.push(chunk));
    src.on('end', () => this.push(null));
    dst.on('drain', () => {
      this.draining = false;
      this.pump();
    });
  }

  private get pending(): number {
    return this.queued + this.dst.writableLength;
  }

  private push(chunk: Buffer | null): void {
    const now = performance.now();
    // Never before an earlier chunk: jitter must not reorder a byte stream.
    const at = Math.max(now + this.o.delayMs + Math.random() * this.o.jitterMs, this.lastAt);
    this.lastAt = at;
    this.queue.push({ at, arrived: now, chunk });
    if (chunk) {
      this.queued += chunk.length;
      this.stats.peakPendingBytes = Math.max(this.stats.peakPendingBytes, this.pending);
      if (this.pending >= this.o.cap && !this.src.isPaused()) {
        this.src.pause();
        this.stats.pauses++;
      }
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.timer || this.draining) return;
    const head = this.queue[0];
    if (!head) return;
    const wait = head.at - performance.now();
    if (wait > 0) this.timer = setTimeout(() => this.pump(), Math.ceil(wait));
    else this.pump();
  }

  private pump(): void {
    this.timer = undefined;
    const now = performance.now();
    // A timer may fire a fraction of a ms early: the check is on the clock, not the timer.
    while (!this.draining && this.queue[0] && (this.queue[0].at as number) <= now) {
      const { chunk, arrived } = this.queue.shift() as { chunk: Buffer | null; arrived: number };
      if (this.dst.destroyed) {
        this.queue.length = 0;
        this.queued = 0;
        return;
      }
      if (!chunk) {
        this.dst.end();
        continue;
      }
      this.queued -= chunk.length;
      this.stats.bytes += chunk.length;
      this.stats.chunks++;
      this.stats.minHeldMs = Math.min(this.stats.minHeldMs, now - arrived);
      this.onBytes(chunk.length);
      if (!this.dst.write(chunk)) this.draining = true;
    }
    if (this.src.isPaused() && this.pending < this.o.cap && !this.src.destroyed) this.src.resume();
    this.schedule();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.queue.length = 0;
    this.queued = 0;
  }
}

/**
 * A userspace TCP relay that adds latency (these kernels have no `tc netem`): each
 * accepted connection is forwarded to `target` through two DelayedPipes. A FIN is
 * relayed (after the delay) as a FIN, so half-closes pass through; a reset or error
 * on either side resets the other at once.
 */
export class LatencyRelay {
  readonly stats: RelayStats = {
    accepted: 0,
    open: 0,
    up: emptyDirection(),
    down: emptyDirection(),
    upBySource: {},
  };
  private readonly server: net.Server;
  private readonly conns = new Set<{ client: net.Socket; upstream: net.Socket; pipes: DelayedPipe[] }>();

  private constructor(private readonly o: LatencyRelayOptions) {
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (c) => this.accept(c));
  }

  /** Starts listening; resolves once it accepts connections. */
  static async start(o: LatencyRelayOptions): Promise<LatencyRelay> {
    if (!(o.delayMs >= 0) || !((o.jitterMs ?? 0) >= 0)) throw new Error('delay and jitter must be ≥ 0 ms');
    const r = new LatencyRelay(o);
    await new Promise<void>((resolve, reject) => {
      r.server.once('error', reject);
      r.server.listen(o.listen.port, o.listen.host, () => {
        r.server.off('error', reject);
        resolve();
      });
    });
    return r;
  }

  /** Where it listens (the real port when `listen.port` was 0). */
  get address(): HostPort {
    const a = this.server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  private accept(client: net.Socket): void {
    this.stats.accepted++;
    this.stats.open++;
    const source = client.remoteAddress ?? '?';
    const upstream = net.connect({ ...this.o.target, allowHalfOpen: true });
    const pipeOpts = {
      delayMs: this.o.delayMs,
      jitterMs: this.o.jitterMs ?? 0,
      cap: this.o.maxPendingBytes ?? 1024 * 1024,
    };
    const conn = { client, upstream, pipes: [] as DelayedPipe[] };
    this.conns.add(conn);
    upstream.once('connect', () => {
      conn.pipes.push(
        new DelayedPipe(client, upstream, pipeOpts, this.stats.up, (n) => {
          this.stats.upBySource[source] = (this.stats.upBySource[source] ?? 0) + n;
        }),
        new DelayedPipe(upstream, client, pipeOpts, this.stats.down, () => {}),
      );
      client.resume();
    });
    let closed = 0;
    const onClose = (other: net.Socket) => (hadError: boolean) => {
      // A reset (or a refused upstream) is passed on as a reset, not delayed: the other
      // side learns of it at once.
      if (hadError && !other.destroyed) other.resetAndDestroy();
      if (++closed === 2) {
        for (const p of conn.pipes) p.stop();
        this.conns.delete(conn);
        this.stats.open--;
      }
    };
    client.on('error', () => {});
    upstream.on('error', () => {});
    client.once('close', onClose(upstream));
    upstream.once('close', onClose(client));
  }

  /** Stops accepting and closes every relayed connection (a FIN to both sides, at once). */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const both = (s: net.Socket) =>
      s.closed ? undefined : new Promise<void>((resolve) => s.once('close', () => resolve()));
    const all: (Promise<void> | undefined)[] = [closed];
    for (const c of this.conns) {
      all.push(both(c.client), both(c.upstream));
      c.client.destroy();
      c.upstream.destroy();
    }
    await Promise.all(all);
  }
}

/** The stats as JSON (Infinity, not representable, as -1). */
export function statsJson(s: RelayStats): string {
  return JSON.stringify(s, (_k, v: unknown) => (v === Number.POSITIVE_INFINITY ? -1 : v));
}

/** A relay running as a child process (in a namespace); `stats` is its latest report. */
export interface RelayProcess {
  readonly child: ChildProcess;
  /** Its listening address, host:port (the real port when asked for port 0). */
  readonly listen: string;
  /** The latest counters it reported (every 200 ms). */
  readonly stats: RelayStats;
  /** Counters reported after `since` (a Date.now() ms; waits up to 5 s for one). */
  freshStats(since?: number): Promise<RelayStats>;
  /** SIGTERM: it closes every connection and exits. */
  stop(): Promise<void>;
}

const SELF = fileURLToPath(import.meta.url);

/**
 * Starts the relay as `node --import tsx latency-proxy.ts …` behind `wrapper` (e.g.
 * `ip netns exec <ns>`: it execs, so the child's pid is the relay's), killed with the
 * test process. Resolves once it listens.
 */
export async function startRelayProcess(
  wrapper: string[],
  o: { listen: string; target: string; delayMs: number; jitterMs?: number; maxPendingBytes?: number },
): Promise<RelayProcess> {
  const args = [
    process.execPath,
    '--import',
    'tsx',
    SELF,
    `--listen=${o.listen}`,
    `--target=${o.target}`,
    `--delay-ms=${o.delayMs}`,
    `--jitter-ms=${o.jitterMs ?? 0}`,
    `--max-pending-bytes=${o.maxPendingBytes ?? 1024 * 1024}`,
  ];
  const [file, ...rest] = [...wrapper, ...args] as [string, ...string[]];
  const child = spawn(file, rest, { cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  killOnExit(child);
  let latest: { at: number; stats: RelayStats } | undefined;
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const ready = new Promise<string>((resolve, reject) => {
    child.once('exit', (code, sig) =>
      reject(new Error(`relay exited (${code ?? sig}) before listening: ${stderr}`)),
    );
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      const m = JSON.parse(line) as { listening?: string; stats?: RelayStats };
      if (m.listening) resolve(m.listening);
      if (m.stats) latest = { at: Date.now(), stats: fromJson(m.stats) };
    });
  });
  const timeout = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const listen = await ready.finally(() => clearTimeout(timeout));
  return {
    child,
    listen,
    get stats() {
      if (!latest) throw new Error('the relay has not reported yet');
      return latest.stats;
    },
    async freshStats(since = Date.now()) {
      for (const end = Date.now() + 5000; Date.now() < end; await new Promise((r) => setTimeout(r, 50)))
        if (latest && latest.at > since) return latest.stats;
      throw new Error(`the relay reported nothing for 5 s: ${stderr}`);
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

function fromJson(s: RelayStats): RelayStats {
  const fix = (d: DirectionStats) => ({
    ...d,
    minHeldMs: d.minHeldMs < 0 ? Number.POSITIVE_INFINITY : d.minHeldMs,
  });
  return { ...s, up: fix(s.up), down: fix(s.down) };
}

function hostPort(s: string): HostPort {
  const i = s.lastIndexOf(':');
  const port = Number(s.slice(i + 1));
  if (i < 0 || !Number.isInteger(port)) throw new Error(`not host:port: ${s}`);
  return { host: s.slice(0, i), port };
}

/**
 * The child's entry: `--listen=h:p --target=h:p --delay-ms=N [--jitter-ms=N]
 * [--max-pending-bytes=N]`. Prints `{"listening":"h:p"}`, then `{"stats":…}` every
 * 200 ms and once more at SIGTERM, when it closes everything and exits 0.
 */
async function main(argv: string[]): Promise<void> {
  const arg = (name: string, dflt?: string): string => {
    const v = argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
    if (v === undefined) throw new Error(`--${name}= is required`);
    return v;
  };
  const relay = await LatencyRelay.start({
    listen: hostPort(arg('listen')),
    target: hostPort(arg('target')),
    delayMs: Number(arg('delay-ms')),
    jitterMs: Number(arg('jitter-ms', '0')),
    maxPendingBytes: Number(arg('max-pending-bytes', String(1024 * 1024))),
  });
  const a = relay.address;
  process.stdout.write(`${JSON.stringify({ listening: `${a.host}:${a.port}` })}\n`);
  const report = () => process.stdout.write(`{"stats":${statsJson(relay.stats)}}\n`);
  const tick = setInterval(report, 200);
  process.once('SIGTERM', () => {
    clearInterval(tick);
    void relay.close().then(() => {
      report();
      process.exit(0);
    });
  });
}

if (process.argv[1] === SELF) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`${String(err)}\n`);
    process.exit(1);
  });
}
