import type {
  ClientHttp2Stream,
  ClientSessionRequestOptions,
  Http2Session,
  OutgoingHttpHeaders,
} from 'node:http2';
import { Http2SessionManager } from '@connectrpc/connect-node';

/**
 * connect-node's HTTP/2 session manager whose sessions survive its keepalive
 * race: the ping timer can fire on a session destroyed a tick earlier, before
 * the close handler stops the timer (connect-es#1795, fix pending in #1797), and
 * Node's `ping` throws ERR_HTTP2_INVALID_SESSION synchronously from the timer,
 * killing the process (seen in a directory under CPU load). Shipped with the
 * SDK too: its clients keep connections alive the same way.
 */
export class PingGuardedSessionManager extends Http2SessionManager {
  private readonly pingGuarded = new WeakSet<Http2Session>();

  /**
   * `connectionWindow` (bytes, 0 = Node's 64 KiB): each session's connection-level
   * receive window, widened as the session is first used. Node starts every session
   * at 64 KiB, so 16 concurrent 64 KiB downloads would share one window per round
   * trip; the stream window is a SETTINGS value, passed in `http2SessionOptions`.
   */
  constructor(
    url: string | URL,
    pingOptions?: ConstructorParameters<typeof Http2SessionManager>[1],
    http2SessionOptions?: ConstructorParameters<typeof Http2SessionManager>[2],
    private readonly connectionWindow = 0,
  ) {
    super(url, pingOptions, http2SessionOptions);
  }

  override async request(
    method: string,
    path: string,
    headers: OutgoingHttpHeaders,
    options: Omit<ClientSessionRequestOptions, 'signal'>,
  ): Promise<ClientHttp2Stream> {
    const stream = await super.request(method, path, headers, options);
    const session = stream.session;
    if (session && !this.pingGuarded.has(session)) {
      this.pingGuarded.add(session);
      guardPing(session);
      if (this.connectionWindow > 0 && !session.destroyed) session.setLocalWindowSize(this.connectionWindow);
    }
    return stream;
  }
}

/**
 * Makes `session.ping` on a destroyed or closed session call back with an error
 * (code ERR_HTTP2_INVALID_SESSION, on the next tick) instead of throwing, on this
 * one session object; connect-node ignores errors in its ping callback.
 */
export function guardPing(session: Http2Session): void {
  const ping = session.ping.bind(session) as (...args: unknown[]) => boolean;
  const guarded = (...args: unknown[]): boolean => {
    if (!session.destroyed && !session.closed) return ping(...args);
    const callback = args.find((a) => typeof a === 'function') as ((err: Error) => void) | undefined;
    const err = Object.assign(new Error('ping on a closed HTTP/2 session'), {
      code: 'ERR_HTTP2_INVALID_SESSION',
    });
    if (callback) process.nextTick(callback, err);
    return false;
  };
  session.ping = guarded as Http2Session['ping'];
}
