import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';

export type RequestHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** Takes an HTTP/2 stream before the compatibility layer wraps it; false passes it on. */
export type StreamHandler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => boolean;

/** HTTP/2 flow-control windows: blob chunks are up to 4 MiB, many streams share a connection. */
export const STREAM_WINDOW = 4 * 1024 * 1024;
export const CONNECTION_WINDOW = 64 * 1024 * 1024;
/**
 * Largest HTTP/2 DATA frame each side lets its peer send: 1 MiB instead of the
 * 16 KiB default, so a 64 KiB message arrives as one chunk (one event, no reassembly).
 */
export const MAX_FRAME_SIZE = 1 << 20;

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

  constructor(handler: RequestHandler, streamHandler?: StreamHandler) {
    this.h1 = http.createServer({ keepAliveTimeout: 65_000 }, handler as http.RequestListener);
    this.h2 = http2.createServer(
      {
        settings: {
          maxConcurrentStreams: 1000,
          initialWindowSize: STREAM_WINDOW,
          maxFrameSize: MAX_FRAME_SIZE,
        },
      },
      handler as never,
    );
    if (streamHandler) {
      // The compatibility layer listens on 'stream' and wraps every stream in a
      // request/response pair; streams the direct handler takes must not reach it.
      const emit = this.h2.emit.bind(this.h2);
      this.h2.emit = ((event: string | symbol, ...args: unknown[]) => {
        if (event === 'stream' && streamHandler(args[0] as never, args[1] as never)) return true;
        return emit(event, ...args);
      }) as typeof this.h2.emit;
    }
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
