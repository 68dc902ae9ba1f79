import { Code, ConnectError } from '@connectrpc/connect';

/** Every failure of the SDK: a gRPC status code, a message, and whether a retry may help. */
export class HaystackError extends Error {
  /** The gRPC status code (Connect's numbering). */
  readonly code: Code;
  /** The code's name, e.g. "NOT_FOUND". */
  readonly codeName: string;

  constructor(message: string, code: Code, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HaystackError';
    this.code = code;
    this.codeName = codeName(code);
  }

  /** True for failures a later attempt may not see (the cluster or the network was unavailable). */
  get retryable(): boolean {
    return this.code === Code.Unavailable;
  }
}

/** The blob does not exist (or was deleted). */
export class NotFoundError extends HaystackError {
  override name = 'NotFoundError';
}
/** The request was malformed: bad id, size mismatch, bad content type... */
export class InvalidArgumentError extends HaystackError {
  override name = 'InvalidArgumentError';
}
/** A blob with this id already exists. */
export class AlreadyExistsError extends HaystackError {
  override name = 'AlreadyExistsError';
}
/** A limit was hit: rate limit (HTTP 429), upload size limit, store space. */
export class ResourceExhaustedError extends HaystackError {
  override name = 'ResourceExhaustedError';
}
/** No gateway, directory or store could serve the call (after retries). */
export class UnavailableError extends HaystackError {
  override name = 'UnavailableError';
}
/** The call's deadline passed. */
export class DeadlineExceededError extends HaystackError {
  override name = 'DeadlineExceededError';
}
/** The content did not match its SHA-256 (end-to-end verification). */
export class IntegrityError extends HaystackError {
  override name = 'IntegrityError';
  constructor(message: string) {
    super(message, Code.DataLoss);
  }
}

/**
 * What a call rejects with once its AbortSignal fired: the signal's reason — an
 * `AbortError` DOMException for `controller.abort()`, `TimeoutError` for
 * `AbortSignal.timeout()`, or whatever the caller passed to `abort(reason)` —
 * as `fetch` does (WHATWG DOM §3.1 "abort reason"). Never a HaystackError.
 */
export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

export function codeName(code: Code): string {
  return (Code[code] ?? 'UNKNOWN').replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase();
}

const CLASSES: Partial<Record<Code, typeof HaystackError>> = {
  [Code.NotFound]: NotFoundError,
  [Code.InvalidArgument]: InvalidArgumentError,
  [Code.OutOfRange]: InvalidArgumentError,
  [Code.AlreadyExists]: AlreadyExistsError,
  [Code.ResourceExhausted]: ResourceExhaustedError,
  [Code.Unavailable]: UnavailableError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
};

/** The SDK error for anything thrown by a call. */
export function toHaystackError(err: unknown): HaystackError {
  if (err instanceof HaystackError) return err;
  const ce = ConnectError.from(err);
  const Cls = CLASSES[ce.code] ?? HaystackError;
  return new Cls(ce.rawMessage, ce.code, { cause: err });
}

/**
 * Failures worth another attempt: UNAVAILABLE (what Envoy, a restarting gateway or
 * a refused connection answer), and for idempotent calls a stream cut mid-way
 * (an HTTP/2 reset or a closed socket surfaces as INTERNAL, UNKNOWN or CANCELED).
 */
export function isRetryable(err: unknown, idempotent: boolean): boolean {
  const ce = err instanceof HaystackError ? err : ConnectError.from(err);
  if (ce.code === Code.Unavailable) return true;
  if (!idempotent) return false;
  // CANCELED that the caller did not ask for (callers check their own signal first):
  // a proxy or server whose connection died resets its streams with CANCEL.
  const transient = [Code.Internal, Code.Unknown, Code.Aborted, Code.Canceled];
  if (!transient.includes(ce.code)) return false;
  const msg =
    err instanceof Error ? `${err.message} ${String((err as { cause?: unknown }).cause ?? '')}` : '';
  return /stream|reset|socket|premature|closed|ECONN|EPIPE|terminated|network|fetch failed/i.test(msg);
}
