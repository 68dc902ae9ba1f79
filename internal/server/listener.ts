import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { type ListenerLimits, prepareSession, serverHttp2Settings } from './listener-limits.js';

export { CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW } from './listener-limits.js';

export type RequestHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** Takes an HTTP/2 stream before the compatibility layer wraps it; false passes it on. */
export type StreamHandler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => boolean;

/** What the server does with a listener, whichever transport it is. */
export interface Listener {
  listen(host: string, port: number): Promise<{ host: string; port: number }>;
  /** Stops accepting connections and asks open ones to finish (GOAWAY, idle close). */
  stopAccepting(): void;
  /** Cuts every remaining connection. */
  destroyAll(): void;
}

/**
 * Routes 'stream' events the direct handler takes away from the compatibility
 * layer, which otherwise wraps every stream in a request/response pair.
 */
export function divertStreams(
  server: http2.Http2Server | http2.Http2SecureServer,
  streamHandler?: StreamHandler,
): void {
  if (!streamHandler) return;
  const emit = server.emit.bind(server);
  server.emit = ((event: string | symbol, ...args: unknown[]) => {
    if (event === 'stream' && streamHandler(args[0] as never, args[1] as never)) return true;
    return emit(event, ...args);
  }) as typeof server.emit;
}

/** The connection preface of cleartext HTTP/2 with prior knowledge starts with "PRI ". */
const H2_PREFACE = Buffer.from('PRI ');

/**
 * INSECURE_PLAINTEXT only: one TCP port for HTTP/2 cleartext and HTTP/1.1.
 * Node's h2c server cannot fall back to HTTP/1.1, so we peek at the first
 * bytes of each connection (within `handshakeMs`) and hand the socket to the
 * matching server. The TLS listener (tls-listener.ts) is the default.
 */
export class DualProtocolListener implements Listener {
  readonly h1: http.Server;
  readonly h2: http2.Http2Server;
  private readonly tcp: net.Server;
  private readonly sessions = new Set<http2.Http2Session>();
  private readonly sockets = new Set<net.Socket>();

  constructor(
    handler: RequestHandler,
    streamHandler: StreamHandler | undefined,
    private readonly limits: ListenerLimits,
  ) {
    this.h1 = http.createServer(
      {
        keepAliveTimeout: Math.min(65_000, limits.idleMs),
        headersTimeout: limits.headersMs,
        requestTimeout: 0,
        connectionsCheckingInterval: Math.max(100, Math.min(1000, limits.headersMs / 2)),
      },
      handler as http.RequestListener,
    );
    this.h2 = http2.createServer({ settings: serverHttp2Settings(limits) }, handler as never);
    divertStreams(this.h2, streamHandler);
    this.h2.on('session', (s) => {
      prepareSession(s, limits, this.sockets);
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
    // A connection that never says which protocol it speaks is cut.
    socket.setTimeout(this.limits.handshakeMs, () => socket.destroy());
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      if (head.length < H2_PREFACE.length && H2_PREFACE.subarray(0, head.length).equals(head)) return;
      socket.off('data', onData);
      socket.setTimeout(0);
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
        // The HTTP/1.1 server gets its sockets from us and never listens itself; its
        // header-timeout sweep starts on 'listening', so it is told it is.
        this.h1.emit('listening');
        const addr = this.tcp.address() as net.AddressInfo;
        resolve({ host: addr.address, port: addr.port });
      });
    });
  }

  stopAccepting(): void {
    this.tcp.close();
    for (const s of this.sessions) s.close();
    this.h1.closeIdleConnections();
  }

  destroyAll(): void {
    for (const s of this.sessions) s.destroy();
    for (const sock of this.sockets) sock.destroy();
    this.h1.closeAllConnections();
    this.h1.close();
  }
}
