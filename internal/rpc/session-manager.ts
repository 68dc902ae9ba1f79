import type {
  ClientHttp2Stream,
  ClientSessionRequestOptions,
  Http2Session,
  OutgoingHttpHeaders,
} from 'node:http2';
import { PingGuardedSessionManager } from '../sdk/ping-guard.js';
import { CONNECTION_WINDOW } from '../server/listener-limits.js';

/**
 * connect-node's HTTP/2 session manager, with a lasting 'error' listener on every
 * session it hands a stream out of. Its keepalive can destroy a session with an
 * error ("PING timed out") after its own listeners are gone — the same class of
 * bug as connectrpc/connect-es#1795 — and Node then throws the unhandled 'error'
 * event, killing the process (seen in a gateway following a directory that was
 * killed -9 under CPU load). Streams and the manager still see the failure; only
 * the process-level crash is prevented. Pings on destroyed sessions are
 * answered, not thrown (PingGuardedSessionManager). It also widens each session's
 * connection-level window as it is first used: Node starts sessions with 64 KiB,
 * so 32 concurrent blob streams would share 64 KiB per round trip (the stream
 * window is a SETTINGS value, passed in the session options, rpc/session.ts).
 */
export class GuardedHttp2SessionManager extends PingGuardedSessionManager {
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
      if (!session.destroyed) session.setLocalWindowSize(CONNECTION_WINDOW);
    }
    return stream;
  }
}
