import { ConnectError, type Interceptor } from '@connectrpc/connect';

/**
 * Node's and connect-node's wording of an HTTP/2 stream reset with
 * REFUSED_STREAM (0x7): "Stream closed with error code NGHTTP2_REFUSED_STREAM"
 * (ERR_HTTP2_STREAM_ERROR) and "http/2 stream closed with error code
 * REFUSED_STREAM (0x7)".
 */
const REFUSED = /REFUSED_STREAM/;

/**
 * Whether `err` (or an error in its cause chain) is a stream the peer refused
 * before processing it. RFC 9113 §8.7: a stream reset with REFUSED_STREAM
 * "indicates that the stream is being closed prior to any processing having
 * occurred", so any request on it can be retried — typically a new stream that
 * raced the peer's GOAWAY of an idle connection.
 */
export function isRefusedStream(err: unknown): boolean {
  let e: unknown = err;
  for (let depth = 0; depth < 8 && e instanceof Error; depth++) {
    const message = e instanceof ConnectError ? e.rawMessage : e.message;
    if (REFUSED.test(message)) return true;
    e = e.cause;
  }
  return false;
}

/**
 * Retries a unary call once when its stream was refused (isRefusedStream):
 * the request was never processed, so the retry cannot apply it twice. A
 * streaming call is not retried (its request stream is consumed), nor a call
 * whose signal has fired (a deadline or the caller's cancel).
 */
export function retryRefusedUnary(): Interceptor {
  return (next) => async (req) => {
    if (req.stream) return next(req);
    try {
      return await next(req);
    } catch (err) {
      if (!isRefusedStream(err) || req.signal.aborted) throw err;
      return next(req);
    }
  };
}
