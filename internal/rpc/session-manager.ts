import type {
  ClientHttp2Stream,
  ClientSessionRequestOptions,
  Http2Session,
  OutgoingHttpHeaders,
} from 'node:http2';
import { CONNECTION_WINDOW } from '../server/listener-limits.js';
import { PingGuardedSessionManager } from './ping-guard.js';

/**
 * connect-node's HTTP/2 session manager, with a lasting 'error' listener on every
 * session it hands a stream out of. Its keepalive can destroy a session with an
 * error ("PING timed out") after its own listeners are gone — the same class of
 * bug as connectrpc/connect-es#1795 — and Node then throws the unhandled 'error'
 * event, killing the process (seen in a gateway following a directory that was
 * killed -9 under CPU load). Streams and the manager still see the failure; only
 * the process-level crash is prevented. Pings on destroyed sessions are
 * answered, not thrown, and each session's connection window is CONNECTION_WINDOW
 * (PingGuardedSessionManager; the stream window is in the session options,
 * rpc/session.ts).
 */
export class GuardedHttp2SessionManager extends PingGuardedSessionManager {
  private readonly guarded = new WeakSet<Http2Session>();

  constructor(
    url: string | URL,
    pingOptions?: ConstructorParameters<typeof PingGuardedSessionManager>[1],
    http2SessionOptions?: ConstructorParameters<typeof PingGuardedSessionManager>[2],
  ) {
    super(url, pingOptions, http2SessionOptions, CONNECTION_WINDOW);
  }

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
    }
    return stream;
  }
}
