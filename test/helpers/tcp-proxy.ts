import net from 'node:net';
import { freePort } from './ports.js';

/**
 * A loopback TCP proxy a test can cut: a process pointed at it loses its peer (open
 * connections reset, new ones closed at once) without the peer going down for others.
 */
export class TcpProxy {
  private readonly sockets = new Set<net.Socket>();
  private isCut = false;
  /** Where new connections go (settable: the peer may start after the proxy). */
  targetPort: number;

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    targetPort: number,
  ) {
    this.targetPort = targetPort;
  }

  /** Listens on a free loopback port and forwards each connection to `targetPort`. */
  static async start(targetPort = 0, host = '127.0.0.1'): Promise<TcpProxy> {
    const port = await freePort();
    let proxy: TcpProxy | undefined;
    const server = net.createServer((client) => {
      if (!proxy || proxy.isCut) {
        client.destroy();
        return;
      }
      const upstream = net.connect(proxy.targetPort, host);
      for (const s of [client, upstream]) {
        proxy.sockets.add(s);
        s.on('close', () => proxy?.sockets.delete(s));
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    proxy = new TcpProxy(server, port, targetPort);
    return proxy;
  }

  /** Resets every open connection and refuses new ones until heal(). */
  cut(): void {
    this.isCut = true;
    for (const s of this.sockets) s.destroy();
  }

  heal(): void {
    this.isCut = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
