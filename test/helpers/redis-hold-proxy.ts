import net from 'node:net';

/**
 * A TCP proxy in front of a redis-server that can hold one command: the test arms it
 * with a predicate over a command's arguments; the first matching command a client sends
 * is kept (with everything that client sends after it, so their order is kept) until the
 * test releases it. Replies pass untouched. It parses the clients' RESP arrays (what
 * ioredis sends); bytes that are not one are forwarded as they come.
 */
export class RedisHoldProxy {
  private armed: { match: (args: string[]) => boolean; held: () => void } | undefined;
  private holding: Conn | undefined;
  private readonly conns = new Set<Conn>();

  private constructor(private readonly server: net.Server) {}

  static async start(target: { host: string; port: number }): Promise<RedisHoldProxy> {
    const server = net.createServer();
    const proxy = new RedisHoldProxy(server);
    server.on('connection', (client) => {
      const conn: Conn = new Conn(client, net.connect(target.port, target.host), (args) =>
        proxy.shouldHold(args, conn),
      );
      proxy.conns.add(conn);
      client.once('close', () => proxy.conns.delete(conn));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /** Resolves once a command matching `match` (its name and arguments, as text) is held. */
  hold(match: (args: string[]) => boolean): Promise<void> {
    if (this.armed || this.holding) throw new Error('already holding a command');
    return new Promise((held) => {
      this.armed = { match, held };
    });
  }

  /** Sends the held command, and what its client sent after it, on. */
  release(): void {
    const c = this.holding;
    this.holding = undefined;
    c?.resume();
  }

  /** Drops every client connection now (as a Redis that died would); a held command is dropped with its connection. */
  dropConnections(): void {
    this.holding = undefined;
    for (const c of this.conns) c.destroy();
  }

  private shouldHold(args: string[], conn: Conn): boolean {
    const a = this.armed;
    if (!a?.match(args)) return false;
    this.armed = undefined;
    this.holding = conn;
    a.held();
    return true;
  }

  async close(): Promise<void> {
    this.release();
    for (const c of this.conns) c.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** One client connection: forwards whole commands in order, unless one is held. */
class Conn {
  private pending: Buffer = Buffer.alloc(0);
  private held = false;

  constructor(
    private readonly client: net.Socket,
    private readonly upstream: net.Socket,
    private readonly shouldHold: (args: string[]) => boolean,
  ) {
    upstream.pipe(client);
    client.on('data', (d: Buffer) => {
      this.pending = this.pending.length > 0 ? Buffer.concat([this.pending, d]) : d;
      this.pump();
    });
    const close = () => this.destroy();
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  }

  resume(): void {
    this.held = false;
    this.pump();
  }

  destroy(): void {
    this.client.destroy();
    this.upstream.destroy();
  }

  private pump(): void {
    while (!this.held && this.pending.length > 0) {
      const cmd = parseCommand(this.pending);
      if (cmd === undefined) return; // incomplete: wait for more bytes
      if (cmd.args && this.shouldHold(cmd.args)) {
        this.held = true;
        return;
      }
      this.upstream.write(this.pending.subarray(0, cmd.end));
      this.pending = this.pending.subarray(cmd.end);
    }
  }
}

/**
 * The first command in `buf`: a RESP array of bulk strings (`*N\r\n` then N times
 * `$len\r\n<bytes>\r\n`) with its arguments, or the whole buffer when it is not one;
 * undefined when the command is not complete yet.
 */
function parseCommand(buf: Buffer): { end: number; args?: string[] } | undefined {
  if (buf[0] !== 0x2a /* '*' */) return { end: buf.length };
  const line = (from: number): { value: number; next: number } | undefined => {
    const cr = buf.indexOf('\r\n', from);
    return cr < 0 ? undefined : { value: Number(buf.toString('latin1', from + 1, cr)), next: cr + 2 };
  };
  const head = line(0);
  if (!head) return undefined;
  const args: string[] = [];
  let at = head.next;
  for (let i = 0; i < head.value; i++) {
    if (at >= buf.length) return undefined;
    if (buf[at] !== 0x24 /* '$' */) return { end: buf.length };
    const len = line(at);
    if (!len) return undefined;
    if (len.next + len.value + 2 > buf.length) return undefined;
    args.push(buf.toString('latin1', len.next, len.next + len.value));
    at = len.next + len.value + 2;
  }
  return { end: at, args };
}
