import type http2 from 'node:http2';
import type net from 'node:net';

/**
 * Limits every listener enforces so a client cannot hold a connection or a
 * server's memory for nothing (slowloris, a bare HTTP/2 preface, an idle
 * TCP connection): see docs/security.md.
 */
export interface ListenerLimits {
  /** A new connection must finish its TLS handshake (or, plaintext, show its protocol) within this. */
  handshakeMs: number;
  /** An HTTP/1.1 request must deliver its headers within this. */
  headersMs: number;
  /** A connection with no open stream or request is closed after this long without traffic. */
  idleMs: number;
  /** Concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS). */
  maxStreamsPerConnection: number;
  /**
   * A call on the direct gRPC path (uploads: Write, WriteShard, Upload) whose
   * request stream brings no byte for this long while its handler waits for one
   * ends DEADLINE_EXCEEDED: a vanished or stalled client holds no per-blob lock,
   * reservation or buffer beyond it.
   */
  requestIdleMs: number;
}

export const DEFAULT_LISTENER_LIMITS: ListenerLimits = {
  handshakeMs: 10_000,
  headersMs: 15_000,
  idleMs: 120_000,
  maxStreamsPerConnection: 1000,
  requestIdleMs: 60_000,
};

/** HTTP/2 flow-control windows: blob chunks are up to 4 MiB, many streams share a connection. */
export const STREAM_WINDOW = 4 * 1024 * 1024;
export const CONNECTION_WINDOW = 64 * 1024 * 1024;
/**
 * Largest HTTP/2 DATA frame each side lets its peer send: 1 MiB instead of the
 * 16 KiB default, so a 64 KiB message arrives as one chunk (one event, no reassembly).
 */
export const MAX_FRAME_SIZE = 1 << 20;

export function serverHttp2Settings(limits: ListenerLimits): http2.Settings {
  return {
    maxConcurrentStreams: limits.maxStreamsPerConnection,
    initialWindowSize: STREAM_WINDOW,
    maxFrameSize: MAX_FRAME_SIZE,
  };
}

/**
 * Prepares one server HTTP/2 session: the wide connection window (the 64 KiB
 * default throttles every concurrent upload to one window per round trip) and
 * the idle close: no traffic for `idleMs` while no stream is open → GOAWAY.
 * Quiet long-lived streams (heartbeats, watches) keep their connection.
 */
export function prepareSession(
  s: http2.ServerHttp2Session,
  limits: ListenerLimits,
  sockets: Iterable<net.Socket>,
): void {
  // The session hides its socket; remember which one it is to cut a peer that
  // ignores GOAWAY (Node only half-closes, and a client that never reads keeps it).
  const peer = { address: s.socket.remoteAddress, port: s.socket.remotePort };
  const cut = () => {
    s.destroy();
    for (const sock of sockets) {
      if (sock.remoteAddress === peer.address && sock.remotePort === peer.port) sock.destroy();
    }
  };
  s.once('localSettings', () => {
    if (!s.destroyed) s.setLocalWindowSize(CONNECTION_WINDOW);
  });
  let open = 0;
  s.on('stream', (stream: http2.ServerHttp2Stream) => {
    open++;
    stream.once('close', () => open--);
  });
  s.setTimeout(limits.idleMs, () => {
    if (open === 0 && !s.closed && !s.destroyed) {
      s.close();
      setTimeout(cut, 1000).unref();
    }
  });
}
