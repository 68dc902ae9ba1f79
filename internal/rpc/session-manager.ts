import type {
  ClientHttp2Stream,
  ClientSessionRequestOptions,
  Http2Session,
  OutgoingHttpHeaders,
} from 'node:http2';
import { Http2SessionManager } from '@connectrpc/connect-node';
import { CONNECTION_WINDOW } from '../server/listener-limits.js';

/**
 * connect-node's HTTP/2 session manager, made safe for a long-lived process. On every
 * session it hands a stream out of, once:
 * - a lasting 'error' listener. Its keepalive can destroy a session with an error
 *   ("PING timed out") after its own listeners are gone, and Node then throws the
 *   unhandled 'error' event, killing the process (seen in a gateway following a
 *   directory that was killed -9 under CPU load). Streams and the manager still see
 *   the failure.
 * - pings that cannot throw (guardPing): the ping timer can fire on a session
 *   destroyed a tick earlier, before the close handler stops the timer
 *   (connectrpc/connect-es#1795, fix pending in #1797), and Node's `ping` throws
 *   ERR_HTTP2_INVALID_SESSION synchronously from the timer (seen in a directory).
 * - a connection-level receive window of CONNECTION_WINDOW. Node starts every session
 *   at 64 KiB, so concurrent streams would share one window per round trip; the stream
 *   window is a SETTINGS value, in the session options (rpc/session.ts).
 */
export class GuardedHttp2SessionManager extends Http2SessionManager {
  private readonly guarded = new WeakSet<Http2Session>();

  override async request(
    method: string,
    path: string,
    headers: OutgoingHttpHeaders,
    options: Omit<ClientSessionRequestOptions, 'signal'>,
  ): Promise<ClientHttp2Stream> {
    const stream = await super.request(method, path, headers, options);
    const session = stream.session;
    if (session && !this.guarded.has(session)) {
      this.guarded.add(session);
      session.on('error', () => {});
      guardPing(session);
      if (!session.destroyed) session.setLocalWindowSize(CONNECTION_WINDOW);
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
