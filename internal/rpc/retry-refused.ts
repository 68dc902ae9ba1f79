import { ConnectError, type Interceptor } from '@connectrpc/connect';

/**
 * A stream reset with REFUSED_STREAM (0x7), as this client saw it: Node's
 * ERR_HTTP2_STREAM_ERROR "Stream closed with error code NGHTTP2_REFUSED_STREAM",
 * or connect-node's own error for the reset code, word for word. Only errors made
 * on this side count: an error a peer answered with carries the peer's text
 * (which may quote another call's failure), and that call was processed.
 */
const NODE_REFUSED = /^Stream closed with error code NGHTTP2_REFUSED_STREAM$/;
const CONNECT_REFUSED = 'http/2 stream closed with error code REFUSED_STREAM (0x7)';

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
    if (e instanceof ConnectError) {
      // A peer's answer carries its trailers (grpc-status); the transport's own error none.
      if (e.rawMessage === CONNECT_REFUSED && !e.metadata.has('grpc-status')) return true;
    } else if ((e as { code?: unknown }).code === 'ERR_HTTP2_STREAM_ERROR' && NODE_REFUSED.test(e.message)) {
      return true;
    }
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
