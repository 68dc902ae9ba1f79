import { Code, ConnectError, type Interceptor } from '@connectrpc/connect';
import { unreachableCode } from '../sdk/unreachable.js';

/** Errors that carry a gRPC-style code as a string (e.g. the store engine's). */
interface CodedError {
  code:
    | 'NOT_FOUND'
    | 'ALREADY_EXISTS'
    | 'DATA_LOSS'
    | 'RESOURCE_EXHAUSTED'
    | 'INVALID_ARGUMENT'
    | 'FAILED_PRECONDITION'
    | 'UNAVAILABLE';
  message: string;
}

const CODES: Record<CodedError['code'], Code> = {
  NOT_FOUND: Code.NotFound,
  ALREADY_EXISTS: Code.AlreadyExists,
  DATA_LOSS: Code.DataLoss,
  RESOURCE_EXHAUSTED: Code.ResourceExhausted,
  INVALID_ARGUMENT: Code.InvalidArgument,
  FAILED_PRECONDITION: Code.FailedPrecondition,
  UNAVAILABLE: Code.Unavailable,
};

function isCoded(err: unknown): err is CodedError {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && code in CODES;
}

/** Maps domain errors to ConnectErrors; anything unknown becomes INTERNAL (with the message kept). */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (isCoded(err)) {
    // RFC 9110 §10.2.3: the Connect protocol (HTTP callers) sends error metadata as headers.
    const meta = err.code === 'UNAVAILABLE' ? { 'retry-after': '1' } : undefined;
    return new ConnectError(err.message, CODES[err.code], meta, undefined, err);
  }
  const errno = (err as { code?: unknown } | null)?.code;
  if (errno === 'ENOSPC' || errno === 'EDQUOT') {
    return new ConnectError(
      'no space left on the store disk',
      Code.ResourceExhausted,
      undefined,
      undefined,
      err,
    );
  }
  return ConnectError.from(err, Code.Internal);
}

/** Wraps a handler so domain errors leave as proper gRPC statuses. */
export async function mapErrors<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toConnectError(err);
  }
}

export function invalidArgument(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}

/**
 * A client call's failure as its caller sees it: when the connection to `peer`
 * failed (unreachableCode) and the transport made that INTERNAL, UNKNOWN or
 * ABORTED (connect-node passes EINVAL, EHOSTUNREACH, ERR_HTTP2_* through as
 * INTERNAL and ECONNRESET as ABORTED), UNAVAILABLE with a message naming the
 * peer — retryable, for the SDK and the directory client alike. Anything else
 * (an answer from the peer, a deadline, our own cancel) is unchanged.
 */
export function peerCallError(err: unknown, peer: string): unknown {
  const ce = ConnectError.from(err);
  if (ce.code !== Code.Internal && ce.code !== Code.Unknown && ce.code !== Code.Aborted) return err;
  const code = unreachableCode(err);
  if (!code) return err;
  return new ConnectError(
    `${peer} unreachable (${code}): ${ce.rawMessage}; retry`,
    Code.Unavailable,
    ce.metadata,
    undefined,
    ce.cause ?? err,
  );
}

/**
 * A client interceptor applying peerCallError to every call to `peer` (unary
 * calls, and each message of a streaming response), so that "could not reach
 * the peer" leaves every internal client as UNAVAILABLE once, here.
 */
export function unreachableAsUnavailable(peer: string): Interceptor {
  return (next) => async (req) => {
    let res: Awaited<ReturnType<typeof next>>;
    try {
      res = await next(req);
    } catch (err) {
      throw peerCallError(err, peer);
    }
    if (!res.stream) return res;
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* messages;
        } catch (err) {
          throw peerCallError(err, peer);
        }
      })(),
    };
  };
}

/**
 * Error metadata of a store's refusal of a deposed sender's fencing term: the
 * newer term it has seen. A gateway whose placement view lags a new leader sends
 * the old term; with this it can tell "my view is behind, retry" from a real
 * refusal.
 */
export const FENCED_TERM_HEADER = 'haystack-fenced-term';

/** The newer term a store named when it refused `err`'s call as deposed (undefined: not such a refusal). */
export function fencedTerm(err: unknown): bigint | undefined {
  if (!(err instanceof ConnectError) || err.code !== Code.FailedPrecondition) return undefined;
  const v = err.metadata.get(FENCED_TERM_HEADER);
  return v && /^\d{1,20}$/.test(v) ? BigInt(v) : undefined;
}
