import { Code, ConnectError } from '@connectrpc/connect';

/** An HTTP answer decided at the edge of a route: RFC 9110 status, an actionable message. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** gRPC code → RFC 9110 §15 status, for errors that reach an HTTP route. */
const STATUS: Partial<Record<Code, number>> = {
  [Code.InvalidArgument]: 400,
  [Code.Unauthenticated]: 401,
  [Code.PermissionDenied]: 403,
  [Code.NotFound]: 404,
  [Code.AlreadyExists]: 409,
  [Code.Aborted]: 409,
  // The resource's state forbids it (e.g. more replicas than stores), not a request header.
  [Code.FailedPrecondition]: 409,
  [Code.OutOfRange]: 416,
  [Code.ResourceExhausted]: 429,
  [Code.Unimplemented]: 501,
  [Code.Unavailable]: 503,
  [Code.DeadlineExceeded]: 504,
  // Not in RFC 9110, but what proxies log for a client that went away (nginx).
  [Code.Canceled]: 499,
};

/**
 * The one mapping of an error to an HTTP answer: an HttpError as it is, a ConnectError by
 * its code (UNAVAILABLE adds Retry-After), anything else 500.
 */
export function httpErrorOf(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  const ce = ConnectError.from(err);
  const status = STATUS[ce.code] ?? 500;
  return new HttpError(status, ce.rawMessage, status === 503 ? { 'retry-after': '1' } : {});
}

/**
 * Decodes one percent-encoded path segment (RFC 3986 §2.1, UTF-8).
 * @throws HttpError 400 on a malformed escape (`%`, `%ZZ`) or bytes that are not UTF-8.
 */
export function decodeSegment(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new HttpError(
      400,
      `malformed percent-encoding in ${JSON.stringify(raw.slice(0, 100))}: use %XX with two hex digits encoding UTF-8`,
    );
  }
}
