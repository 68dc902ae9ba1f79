import { ConnectError } from '@connectrpc/connect';

/**
 * Node error codes that mean a call's connection to a peer could not be made or
 * broke: the peer is unreachable now, and a later attempt (or another peer) may
 * work. EINVAL is what connect() answers for a destination behind a blackhole
 * route (a network partition, test/netns); ECONNRESET and the HTTP/2 session
 * errors are a peer that died or a cut mid-call.
 */
const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'EINVAL',
  'EADDRNOTAVAIL',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ERR_HTTP2_GOAWAY_SESSION',
  'ERR_HTTP2_SESSION_ERROR',
  'ERR_HTTP2_INVALID_SESSION',
  'ERR_HTTP2_STREAM_CANCEL',
  'ERR_HTTP2_STREAM_ERROR',
  'ERR_HTTP2_PING_CANCEL',
  'ERR_HTTP2_ERROR',
]);

/**
 * connect-node's own errors for a session that died under a call (no Node error
 * behind them): the same "peer unreachable" as the codes above.
 */
const UNREACHABLE_MESSAGES = /^expected open session, but it is (destroyed|closed|connecting)$/;

/**
 * The Node error code in `err`'s cause chain that says the connection to the
 * peer failed (see UNREACHABLE_CODES), or undefined. Errors a peer answered
 * with carry no such cause: connect makes them from the response's status.
 */
export function unreachableCode(err: unknown): string | undefined {
  let e: unknown = err;
  for (let depth = 0; depth < 8 && e instanceof Error; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && UNREACHABLE_CODES.has(code)) return code;
    if (e instanceof ConnectError && UNREACHABLE_MESSAGES.test(e.rawMessage))
      return 'ERR_HTTP2_INVALID_SESSION';
    e = e.cause;
  }
  return undefined;
}
