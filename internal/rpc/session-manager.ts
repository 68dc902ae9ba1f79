import http2 from 'node:http2';
import { Code, ConnectError } from '@connectrpc/connect';
import type { Http2SessionOptions } from '@connectrpc/connect-node';
import { CONNECTION_WINDOW } from '../server/listener-limits.js';

/**
 * The HTTP/2 connection behind connect-node's gRPC transport to one peer (the
 * `sessionManager` option of createGrpcTransport; connect-node's
 * NodeHttp2ClientSessionManager: `authority`, `request`, `notifyResponseByteRead`).
 *
 * It replaces connect-node's Http2SessionManager (2.2.0), whose state machine can
 * orphan a session: when a keepalive PING verifying an idle session fails while
 * another request has already started a new connection, the failed verification
 * starts yet another one, dropping the listeners of the first ("connecting") without
 * destroying it. That connection then has no 'error' listener, so the first reset of
 * it kills the process (two directories at once in the network-fault suite: "read
 * ECONNRESET … Emitted 'error' event on ClientHttp2Session"), and the request that
 * dialled it waits forever (test/unit/rpc/session-manager.test.ts reproduces both).
 *
 * Guarantees:
 * - every session has a lasting 'error' listener from the moment it is created
 *   (failures reach its streams and the request that dialled it instead);
 * - one session serves new streams at a time; a session that is closed, destroyed
 *   or received GOAWAY serves none, and the next request dials a new one (the old
 *   one's streams finish on it);
 * - keepalive (gRPC A8, "Basic Keepalive"; Http2SessionOptions): a PING every
 *   `pingIntervalMs` while streams are open (idle too with `pingIdleConnection`),
 *   reset by response bytes, one outstanding at a time; when neither its answer nor
 *   any byte from the peer has come for `pingTimeoutMs` (after the PING or the last
 *   response byte, as grpc-go's keepalive bounds it, internal/transport/http2_client.go),
 *   the session is destroyed UNAVAILABLE "PING timed out", failing its streams: bytes
 *   meanwhile mean the peer is alive, only slow to answer (a loaded box). A session
 *   that received GOAWAY is not PINGed again (Node cannot PING a closing session);
 *   one PING already out is still judged. A request on a
 *   session silent for longer than `pingIntervalMs` PINGs it first and dials anew
 *   if that fails;
 * - a dial whose TCP and TLS handshakes do not finish within `handshakeTimeoutMs`
 *   (HANDSHAKE_TIMEOUT_MS by default) fails the requests waiting on it UNAVAILABLE at
 *   once (Node sets no limit, and a socket still sending SYNs closes only when the
 *   kernel gives up, about two minutes later); abort() fails them at once too;
 * - a session without streams is unref'd (it does not keep the process alive, except
 *   while a request waits on its verification PING) and closed after
 *   `idleConnectionTimeoutMs` (15 min by default); a destroyed one is forgotten at
 *   once (its 'close' waits for the socket to flush, never to a peer that stopped
 *   reading);
 * - the connection-level receive window is CONNECTION_WINDOW: Node starts every
 *   session at 64 KiB, so concurrent streams would share one window per round trip
 *   (the stream window is a SETTINGS value, in the session options, rpc/session.ts).
 */
export class PeerSessionManager {
  /** The origin requests go to ("https://10.0.0.5:9000"); connect-node checks each call's URL against it. */
  readonly authority: string;
  private current: PeerSession | undefined;
  private readonly sessions = new Set<PeerSession>();
  /** Why the manager was last aborted, and how many times: a request waiting across an abort fails with it. */
  private aborts = 0;
  private abortReason: Error | undefined;
  private readonly keepalive: Keepalive;

  /**
   * `url`: the peer's base URL; `options`: keepalive (Http2SessionOptions) and the dial
   * limit, times in ms; `sessionOptions`: handed to http2.connect for every session (TLS,
   * SETTINGS).
   */
  constructor(
    url: string,
    options: Http2SessionOptions & { handshakeTimeoutMs?: number } = {},
    private readonly sessionOptions: http2.SecureClientSessionOptions = {},
  ) {
    this.authority = new URL(url).origin;
    this.keepalive = {
      pingIntervalMs: options.pingIntervalMs ?? Number.POSITIVE_INFINITY,
      pingTimeoutMs: options.pingTimeoutMs ?? 15_000,
      pingIdleConnection: options.pingIdleConnection ?? false,
      idleConnectionTimeoutMs: options.idleConnectionTimeoutMs ?? 15 * 60_000,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS,
    };
  }

  /**
   * Opens a stream for one call on a usable session, dialling or verifying first
   * as needed. Rejects with the dial's error (connect-node maps it to a
   * ConnectError) or with Node's error from `ClientHttp2Session.request`.
   */
  async request(
    method: string,
    path: string,
    headers: http2.OutgoingHttpHeaders,
    options: Omit<http2.ClientSessionRequestOptions, 'signal'>,
  ): Promise<http2.ClientHttp2Stream> {
    // A session can close between its check and the request (nodejs/help#2105): at most
    // one more try, on a new session.
    for (let attempt = 0; ; attempt++) {
      const s = await this.usable();
      try {
        return s.open({ ...headers, ':method': method, ':path': path }, options);
      } catch (err) {
        if (attempt === 0 && !s.usable()) continue;
        throw err;
      }
    }
  }

  /** A response byte arrived on `stream`: its session is alive, no PING needed yet. */
  notifyResponseByteRead(stream: http2.ClientHttp2Stream): void {
    for (const s of this.sessions) if (s.session === stream.session) s.alive();
  }

  /** Sessions still open or closing (the current one and those finishing streams after a GOAWAY). */
  sessionCount(): number {
    return this.sessions.size;
  }

  /** Destroys every session: their streams and the requests waiting on a dial fail with `reason` (CANCELED by default). */
  abort(reason: Error = new ConnectError('connection aborted', Code.Canceled)): void {
    this.aborts++;
    this.abortReason = reason;
    this.current = undefined;
    for (const s of [...this.sessions]) s.destroy(reason, http2.constants.NGHTTP2_CANCEL);
  }

  private async usable(): Promise<PeerSession> {
    const aborts = this.aborts;
    for (;;) {
      let s = this.current;
      if (!s?.usable()) {
        s = new PeerSession(this.authority, this.sessionOptions, this.keepalive, (gone) => {
          this.sessions.delete(gone);
          if (this.current === gone) this.current = undefined;
        });
        this.sessions.add(s);
        this.current = s;
      }
      await s.handshake;
      if (await s.verified()) return s;
      // Aborted meanwhile (the PING was cancelled): fail as the dial's waiters do.
      if (this.aborts !== aborts) throw this.abortReason;
      // The PING failed and destroyed the session: dial a new one.
    }
  }
}

/** How long a dial may take (TCP + TLS): generous, a handshake at load 60 takes seconds. */
export const HANDSHAKE_TIMEOUT_MS = 20_000;

interface Keepalive {
  pingIntervalMs: number;
  pingTimeoutMs: number;
  pingIdleConnection: boolean;
  idleConnectionTimeoutMs: number;
  handshakeTimeoutMs: number;
}

/** One HTTP/2 session and its keepalive; see PeerSessionManager for the rules. */
class PeerSession {
  readonly session: http2.ClientHttp2Session;
  /** Settles when the session is connected (TLS done) or has failed to. */
  readonly handshake: Promise<void>;
  private streams = 0;
  private lastAliveAt = Date.now();
  private goaway = false;
  private pingTimer: NodeJS.Timeout | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private verifying: Promise<boolean> | undefined;
  /** The PING outstanding, if any. */
  private pinging: Promise<boolean> | undefined;
  private gone = false;
  /** Rejects the handshake's waiters (a no-op once it settled). */
  private failHandshake: (err: Error) => void = () => {};

  constructor(
    authority: string,
    options: http2.SecureClientSessionOptions,
    private readonly k: Keepalive,
    private readonly onGone: (s: PeerSession) => void,
  ) {
    const s = http2.connect(authority, options);
    this.session = s;
    // Failures reach the streams and the handshake's waiters; without a listener
    // Node would throw the session's 'error' event and end the process.
    s.on('error', () => {});
    s.on('goaway', () => {
      this.goaway = true;
      // Node closes a GOAWAY'd session only once its streams are done; one without
      // streams would linger.
      if (this.streams === 0) this.destroy();
    });
    s.once('close', () => this.forget());
    this.handshake = new Promise<void>((resolve, reject) => {
      const done = (err?: unknown) => {
        clearTimeout(timer);
        s.off('connect', onConnect);
        s.off('error', done);
        s.off('close', onClose);
        if (err === undefined) resolve();
        else reject(err);
      };
      const onConnect = () => {
        if (!s.destroyed) s.setLocalWindowSize(CONNECTION_WINDOW);
        // Ref'd while it dials (a caller is waiting); from now on only while it carries streams.
        if (this.streams === 0) s.unref();
        this.lastAliveAt = Date.now();
        this.armPing();
        this.armIdle();
        done();
      };
      const onClose = () =>
        done(new ConnectError('the connection closed during its handshake', Code.Unavailable));
      const timer = safeTimeout(() => {
        this.destroy(
          new ConnectError(
            `the connection's handshake did not finish within ${this.k.handshakeTimeoutMs} ms`,
            Code.Unavailable,
          ),
        );
      }, this.k.handshakeTimeoutMs);
      this.failHandshake = done;
      s.once('connect', onConnect);
      s.once('error', done);
      s.once('close', onClose);
    });
    // Waiters see the rejection; this copy only keeps an unwaited one from being unhandled.
    this.handshake.catch(() => {});
  }

  /**
   * Destroys the session (see ClientHttp2Session.destroy), fails a dial in progress at
   * once and forgets the session: its 'close' comes only when the socket has flushed or,
   * while TCP is still connecting, when the kernel gives up.
   */
  destroy(err?: Error, code?: number): void {
    this.session.destroy(err, code);
    this.failHandshake(
      err ?? new ConnectError('the connection was closed during its handshake', Code.Unavailable),
    );
    this.forget();
  }

  private forget(): void {
    if (this.gone) return;
    this.gone = true;
    this.stopTimers();
    this.session.unref();
    this.onGone(this);
  }

  /** Open for new streams: connected or connecting, not closing, no GOAWAY. */
  usable(): boolean {
    return !this.session.closed && !this.session.destroyed && !this.goaway;
  }

  /** True at once if the session was heard from within pingIntervalMs; else after a PING, false if it failed. */
  verified(): Promise<boolean> {
    if (!this.usable()) return Promise.resolve(false);
    if (Date.now() - this.lastAliveAt <= this.k.pingIntervalMs) return Promise.resolve(true);
    // Ref'd while the PING is out: a request is waiting on it (connect-node does the same).
    this.session.ref();
    this.verifying ??= this.ping().finally(() => {
      this.verifying = undefined;
      if (this.streams === 0 && !this.session.destroyed) this.session.unref();
    });
    return this.verifying;
  }

  /** Opens a stream (throws as ClientHttp2Session.request does) and counts it. */
  open(
    headers: http2.OutgoingHttpHeaders,
    options: Omit<http2.ClientSessionRequestOptions, 'signal'>,
  ): http2.ClientHttp2Stream {
    const stream = this.session.request(headers, options);
    if (++this.streams === 1) {
      this.session.ref();
      clearTimeout(this.idleTimer);
      this.armPing();
    }
    stream.once('response', () => this.alive());
    stream.once('close', () => {
      if (--this.streams > 0) return;
      if (this.goaway && !this.session.destroyed) this.destroy();
      // Node destroys a GOAWAY'd session itself after its last stream: forget it now too.
      if (this.session.destroyed) return this.forget();
      // A request waiting on a verification PING keeps the process alive until it is answered.
      if (!this.verifying) this.session.unref();
      this.armPing();
      this.armIdle();
    });
    return stream;
  }

  alive(): void {
    this.lastAliveAt = Date.now();
    this.armPing();
  }

  /**
   * Sends a PING, or joins the one outstanding (one at a time: a peer slow to answer
   * would otherwise collect them, and Node refuses more than 10). True when answered;
   * false at once for a closing or destroyed session (Node cannot PING one). Else false,
   * with the session destroyed, when the PING fails or when the peer was silent (no
   * answer, no response bytes, no frame at all) for pingTimeoutMs after the PING went
   * out: response bytes keep it waiting until pingTimeoutMs after the last of them
   * (grpc-go's bound), other frames until pingTimeoutMs after the check that saw them
   * (at most twice that). The verdict waits until the event loop has read what is in
   * the socket, so a stall of this process is not taken for silence of the peer.
   */
  private ping(): Promise<boolean> {
    this.pinging ??= new Promise<boolean>((resolve) => {
      const s = this.session;
      if (s.destroyed || s.closed) return resolve(false);
      let settled = false;
      const settle = (ok: boolean) => {
        settled = true;
        clearTimeout(timer);
        resolve(ok);
      };
      const fail = (why: string) => {
        if (settled) return;
        settle(false);
        this.destroy(new ConnectError(why, Code.Unavailable), http2.constants.NGHTTP2_CANCEL);
      };
      // Node writes the PING in an immediate of its own: the clock starts after it, so a
      // stall of this process before the PING is on the wire is not the peer's silence.
      let sentAt = Number.POSITIVE_INFINITY;
      // Any frame the peer sends (WINDOW_UPDATEs for an upload it is reading, say) shows it
      // alive, not only response bytes: the socket's byte count, sampled at each check.
      let bytesSeen = socketBytesRead(s);
      let bytesAt = 0;
      const check = () => {
        // Timers run before the poll phase: read the socket first (setImmediate runs after it).
        setImmediate(() => {
          if (settled) return;
          if (s.destroyed) return settle(false);
          const bytes = socketBytesRead(s);
          if (bytes > bytesSeen) {
            bytesSeen = bytes;
            bytesAt = Date.now();
          }
          // A GOAWAY'd session is judged too: its streams are finishing on it.
          const quietMs = Date.now() - Math.max(this.lastAliveAt, sentAt, bytesAt);
          if (quietMs >= this.k.pingTimeoutMs) return fail('PING timed out');
          timer = safeTimeout(check, this.k.pingTimeoutMs - quietMs);
        });
      };
      let timer: NodeJS.Timeout | undefined;
      setImmediate(() => {
        if (settled) return;
        sentAt = Date.now();
        bytesSeen = socketBytesRead(s);
        timer = safeTimeout(check, this.k.pingTimeoutMs);
      });
      try {
        s.ping((err) => {
          if (settled) return;
          if (err) return fail(`PING failed: ${err.message}`);
          this.lastAliveAt = Date.now();
          settle(true);
        });
      } catch (err) {
        // Node throws when the session was destroyed a moment ago (connect-es#1795).
        fail(`PING failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }).finally(() => {
      this.pinging = undefined;
    });
    return this.pinging;
  }

  private armPing(): void {
    clearTimeout(this.pingTimer);
    if (this.session.destroyed || this.session.connecting) return;
    if (this.streams === 0 && !this.k.pingIdleConnection) return;
    this.pingTimer = safeTimeout(() => {
      void this.ping().then((ok) => ok && this.armPing());
    }, this.k.pingIntervalMs);
  }

  private armIdle(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = safeTimeout(() => {
      if (this.streams > 0) return;
      // Closed gracefully (GOAWAY to the peer); it serves nothing more, so it is forgotten
      // now, not when the peer's FIN comes (never, from a dead one).
      this.session.close();
      this.forget();
    }, this.k.idleConnectionTimeoutMs);
  }

  private stopTimers(): void {
    clearTimeout(this.pingTimer);
    clearTimeout(this.idleTimer);
  }
}

/** Bytes the session's socket has read (0 once it is gone). */
function socketBytesRead(s: http2.ClientHttp2Session): number {
  return s.socket?.bytesRead ?? 0;
}

/** An unref'd setTimeout; none for a delay setTimeout cannot hold (infinite, or over 2³¹−1 ms). */
function safeTimeout(fn: () => void, ms: number): NodeJS.Timeout | undefined {
  if (!(ms <= 0x7fffffff)) return undefined;
  return setTimeout(fn, ms).unref();
}
