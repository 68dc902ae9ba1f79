import http2 from 'node:http2';
import type net from 'node:net';
import type { TLSSocket } from 'node:tls';
import { MESH_CIPHERS } from '../security/tls-config.js';
import { divertStreams, type Listener, type RequestHandler, type StreamHandler } from './listener.js';
import { type ListenerLimits, prepareSession, serverHttp2Settings } from './listener-limits.js';

export interface TlsFilesPem {
  cert: string;
  key: string;
  ca: string;
}

/**
 * The default listener: TLS on one port, ALPN choosing HTTP/2 (gRPC, Envoy)
 * or HTTP/1.1 (Connect, gRPC-Web, Prometheus, probes). Clients are asked for a
 * certificate but not refused without one at the handshake: each call is then
 * authorized by its verified identity (UNAUTHENTICATED without), and plain
 * HTTP routes such as /healthz stay reachable to probes.
 */
export class TlsListener implements Listener {
  readonly server: http2.Http2SecureServer;
  private readonly sessions = new Set<http2.Http2Session>();
  private readonly sockets = new Set<net.Socket>();

  constructor(
    handler: RequestHandler,
    streamHandler: StreamHandler | undefined,
    pem: TlsFilesPem,
    limits: ListenerLimits,
  ) {
    this.server = http2.createSecureServer(
      {
        allowHTTP1: true,
        cert: pem.cert,
        key: pem.key,
        ca: pem.ca,
        requestCert: true,
        rejectUnauthorized: false,
        minVersion: 'TLSv1.2',
        // AES-128-GCM first; our order, not the client's, picks the suite.
        ciphers: MESH_CIPHERS,
        honorCipherOrder: true,
        handshakeTimeout: limits.handshakeMs,
        settings: serverHttp2Settings(limits),
      },
      handler as never,
    );
    // HTTP/1.1 fallback: header timeout swept by Node once listening; no cap on a
    // whole request (large uploads); idle keep-alive connections closed.
    const h1 = this.server as unknown as {
      headersTimeout: number;
      requestTimeout: number;
      keepAliveTimeout: number;
      connectionsCheckingInterval: number;
    };
    h1.headersTimeout = limits.headersMs;
    h1.requestTimeout = 0;
    h1.keepAliveTimeout = Math.min(65_000, limits.idleMs);
    h1.connectionsCheckingInterval = Math.max(100, Math.min(1000, limits.headersMs / 2));
    divertStreams(this.server, streamHandler);
    this.server.on('session', (s) => {
      prepareSession(s, limits, this.sockets);
      this.sessions.add(s);
      s.on('close', () => this.sessions.delete(s));
    });
    this.server.on('secureConnection', (socket: TLSSocket) => {
      socket.setNoDelay(true);
      // HTTP/2 sessions time out in prepareSession; an HTTP/1.1 connection that
      // carries nothing for idleMs (before, between or during requests) is cut.
      if (socket.alpnProtocol !== 'h2') socket.setTimeout(limits.idleMs, () => socket.destroy());
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    this.server.on('connection', (socket: net.Socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    // A failed handshake (a plaintext client, a bad certificate) is the client's problem.
    this.server.on('tlsClientError', (_err, socket) => socket.destroy());
  }

  /** A renewed certificate for every handshake from now on (open connections keep theirs). */
  reloadCertificate(pem: TlsFilesPem): void {
    this.server.setSecureContext({
      cert: pem.cert,
      key: pem.key,
      ca: pem.ca,
      minVersion: 'TLSv1.2',
      ciphers: MESH_CIPHERS,
      honorCipherOrder: true,
    });
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host, port }, () => {
        this.server.off('error', reject);
        const addr = this.server.address() as net.AddressInfo;
        resolve({ host: addr.address, port: addr.port });
      });
    });
  }

  stopAccepting(): void {
    this.server.close();
    for (const s of this.sessions) s.close();
    (this.server as unknown as { closeIdleConnections(): void }).closeIdleConnections();
  }

  destroyAll(): void {
    for (const s of this.sessions) s.destroy();
    for (const sock of this.sockets) sock.destroy();
  }
}
