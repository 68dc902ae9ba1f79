import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';

export type RequestHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** HTTP/2 flow-control windows: blob chunks are up to 4 MiB, many streams share a connection. */
export const STREAM_WINDOW = 4 * 1024 * 1024;
export const CONNECTION_WINDOW = 64 * 1024 * 1024;

/** The connection preface of cleartext HTTP/2 with prior knowledge starts with "PRI ". */
const H2_PREFACE = Buffer.from('PRI ');

/**
 * One TCP port for HTTP/2 cleartext (gRPC from grpcurl, grpc-js, Envoy) and
 * HTTP/1.1 (Connect and gRPC-Web, Prometheus scrapes, curl). Node's h2c server
 * cannot fall back to HTTP/1.1, so we peek at the first bytes of each connection
 * and hand the socket to the matching server.
 */
export class DualProtocolListener {
  readonly h1: http.Server;
  readonly h2: http2.Http2Server;
  private readonly tcp: net.Server;
  private readonly sessions = new Set<http2.Http2Session>();
  private readonly sockets = new Set<net.Socket>();

  constructor(handler: RequestHandler) {
    this.h1 = http.createServer({ keepAliveTimeout: 65_000 }, handler as http.RequestListener);
    this.h2 = http2.createServer(
      { settings: { maxConcurrentStreams: 1000, initialWindowSize: STREAM_WINDOW } },
      handler as never,
    );
    this.h2.on('session', (s) => {
      // The default 64 KiB connection window throttles every concurrent upload on
      // the connection to one window per round trip.
      s.once('localSettings', () => s.setLocalWindowSize(CONNECTION_WINDOW));
      this.sessions.add(s);
      s.on('close', () => this.sessions.delete(s));
    });
    this.tcp = net.createServer((socket) => this.route(socket));
  }

  private route(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.setNoDelay(true);
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      if (head.length < H2_PREFACE.length && H2_PREFACE.subarray(0, head.length).equals(head)) return;
      socket.off('data', onData);
      socket.pause();
      socket.unshift(head);
      const isH2 = head.subarray(0, H2_PREFACE.length).equals(H2_PREFACE);
      if (isH2) {
        // The HTTP/2 session reads what is already buffered with socket.read();
        // resuming here would emit those bytes to nobody.
        this.h2.emit('connection', socket);
      } else {
        this.h1.emit('connection', socket);
        socket.resume();
      }
    };
    socket.on('data', onData);
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.tcp.once('error', reject);
      this.tcp.listen({ host, port }, () => {
        this.tcp.off('error', reject);
        const addr = this.tcp.address() as net.AddressInfo;
        resolve({ host: addr.address, port: addr.port });
      });
    });
  }

  /** Stops accepting connections and asks open ones to finish (GOAWAY, idle close). */
  stopAccepting(): void {
    this.tcp.close();
    for (const s of this.sessions) s.close();
    this.h1.closeIdleConnections();
  }

  /** Cuts every remaining connection. */
  destroyAll(): void {
    for (const s of this.sessions) s.destroy();
    for (const sock of this.sockets) sock.destroy();
    this.h1.closeAllConnections();
  }
}
