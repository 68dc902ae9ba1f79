import http2 from 'node:http2';
import { addAbortSignal, PassThrough } from 'node:stream';
import {
  create,
  type DescMessage,
  type DescMethodStreaming,
  type DescMethodUnary,
  fromBinary,
  isMessage,
  type MessageInitShape,
  type MessageShape,
} from '@bufbuild/protobuf';
import {
  Code,
  ConnectError,
  type StreamResponse,
  type Transport,
  type UnaryResponse,
} from '@connectrpc/connect';
import { drained } from './drain.js';
import {
  codeFromHttpStatus,
  codeFromRstCode,
  decodeGrpcMessage,
  encodeFrame,
  type FrameError,
  FrameParser,
  formatTimeout,
  toHeaders,
} from './grpc-wire.js';
import { unreachableCode } from './unreachable.js';

/*
 * A connect Transport that speaks plain gRPC (PROTOCOL-HTTP2.md) over one Node HTTP/2
 * session, without connect-node's universal client layer, which costs about twice the
 * CPU per call (docs/rpc.md; docs/benchmarks.md, "RPC stacks"). The SDK (grpcTransport)
 * and the mesh's direct path (rpc/direct-transport.ts, which adds mTLS and the identity
 * the peer must prove) both use it. Clients made with createClient() over it get
 * ConnectErrors with the server's code, message and metadata (grpc-status-details-bin is
 * not decoded), headers, trailers, signals and deadlines as over connect-node's
 * createGrpcTransport(); a connection failure is transportError's, a server's reset
 * transportError's or its own code (resetCodes), a non-gRPC answer UNKNOWN.
 */

/**
 * Node's own AbortError class (not exported): `Http2Stream.destroy()` resets a
 * stream with RST_STREAM CANCEL only for an error of that class. Taken once from
 * a throwaway stream that an already-aborted signal destroys synchronously.
 */
const NodeAbortError = (() => {
  const probe = new PassThrough();
  probe.on('error', () => {}); // the probe's own error event, emitted later
  addAbortSignal(AbortSignal.abort(), probe);
  const err = probe.errored;
  if (!(err instanceof Error)) throw new Error('node:stream did not destroy the probe with an AbortError');
  return err.constructor as new (
    message?: string,
  ) => Error;
})();

/**
 * Cancels a call's stream with RST_STREAM CANCEL and nothing before it.
 * `stream.close(code)` would first half-close an open request side, so the
 * server receives END_STREAM, a complete request (a store could commit a
 * forwarded upload its sender refused), and only then the reset.
 */
export function cancelStream(stream: http2.ClientHttp2Stream): void {
  if (stream.destroyed) return;
  if (stream.writableEnded) stream.close(http2.constants.NGHTTP2_CANCEL);
  else stream.destroy(new NodeAbortError('the call was cancelled'));
}

/** How to reach one gRPC server. */
export interface H2TransportOptions {
  /** http://host:port (h2c) or https://host:port (TLS; the options carry CA and certificate). */
  url: string;
  /** Prefix of every call's :path ("" or "/api"), no trailing slash. */
  pathPrefix?: string;
  /** Options of every session opened (settings, TLS). */
  session: http2.SecureClientSessionOptions;
  /** Connection flow-control window opened on each session, bytes (default: Node's 64 KiB). */
  connectionWindow?: number;
  /** Who the session reaches, for error messages ("store at 10.0.0.5:8080"). */
  peer: string;
  /** Keepalive PING interval while calls are open, ms; a missed ack fails them UNAVAILABLE. */
  pingIntervalMs?: number;
  /** Closes the session after this long without calls, ms. */
  idleTimeoutMs?: number;
  /** Largest response message accepted, bytes (default 256 MiB); larger fails RESOURCE_EXHAUSTED. */
  maxMessageBytes?: number;
  /**
   * A server's RST_STREAM of one call as its own code (codeFromRstCode: CANCEL → CANCELED,
   * ENHANCE_YOUR_CALM → RESOURCE_EXHAUSTED, REFUSED_STREAM → UNAVAILABLE, else INTERNAL),
   * as connect-node reports it: the SDK, which retries by code. Default false: a reset
   * is a transportError (the mesh, whose callers retry an unreachable peer).
   */
  resetCodes?: boolean;
  /** user-agent of every call (default: none). */
  userAgent?: string;
  /**
   * A session's or stream's own failure as the call's error (default: unreachable
   * peer → UNAVAILABLE naming it, anything else INTERNAL).
   */
  transportError?: (err: unknown, peer: string) => ConnectError;
}

const DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024;

/** A transport over one HTTP/2 session that can open it ahead of a call and close it. */
export interface H2Transport extends Transport {
  /**
   * Opens (or reuses) the session and waits for its handshake, so a server that
   * cannot prove what the TLS options demand is refused before any call starts:
   * the transportError of the failure, UNAVAILABLE when it cannot be reached,
   * CANCELED when `signal` aborts first.
   */
  handshake(signal?: AbortSignal): Promise<void>;
  /** Destroys the session: open calls fail UNAVAILABLE; a later call opens a new one. */
  close(): void;
}

export function createH2GrpcTransport(o: H2TransportOptions): H2Transport {
  const session = new SessionHolder(o);
  const maxMessageBytes = o.maxMessageBytes ?? DEFAULT_MAX_MESSAGE;
  return {
    handshake: (signal) => session.handshake(signal),
    close: () => session.close(),
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: MessageInitShape<I>,
    ): Promise<UnaryResponse<I, O>> {
      const call = new ClientCall<I, O>(session, method, maxMessageBytes, signal, timeoutMs, header);
      call.sendAll(single(input));
      const response = await call.response();
      let message: MessageShape<O> | undefined;
      for await (const m of call.messages()) {
        if (message !== undefined) {
          throw new ConnectError('the server sent more than one response message', Code.Unimplemented);
        }
        message = m;
      }
      if (message === undefined)
        throw new ConnectError('the server sent no response message', Code.Unimplemented);
      return {
        stream: false,
        service: method.parent,
        method,
        header: response,
        trailer: call.trailer,
        message,
      };
    },
    async stream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodStreaming<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: AsyncIterable<MessageInitShape<I>>,
    ): Promise<StreamResponse<I, O>> {
      const call = new ClientCall<I, O>(session, method, maxMessageBytes, signal, timeoutMs, header);
      call.sendAll(input);
      const response = await call.response();
      return {
        stream: true,
        service: method.parent,
        method,
        header: response,
        trailer: call.trailer,
        message: call.messages(),
      };
    },
  };
}

async function* single<T>(value: T): AsyncGenerator<T> {
  yield value;
}

/** One HTTP/2 session to the server, reopened after it closes or fails. */
class SessionHolder {
  private session: http2.ClientHttp2Session | undefined;
  /** Open calls per session: each session is ref'd while it carries one (a GOAWAY'd session's calls finish on it). */
  private readonly active = new WeakMap<http2.ClientHttp2Session, number>();
  private pinger: NodeJS.Timeout | undefined;
  /** Who this session reaches, for error messages ("store at 10.0.0.5:8080"). */
  readonly peer: string;
  readonly transportError: (err: unknown, peer: string) => ConnectError;
  readonly pathPrefix: string;
  readonly resetCodes: boolean;
  readonly userAgent: string | undefined;

  constructor(private readonly o: H2TransportOptions) {
    this.peer = o.peer;
    this.pathPrefix = o.pathPrefix ?? '';
    this.resetCodes = o.resetCodes ?? false;
    this.userAgent = o.userAgent;
    this.transportError = o.transportError ?? unreachableError;
  }

  /** See H2Transport.close. */
  close(): void {
    const s = this.session;
    this.session = undefined;
    clearInterval(this.pinger);
    s?.destroy(
      new ConnectError(`the connection to ${this.peer} was closed by this client`, Code.Unavailable),
    );
  }

  /** See DirectTransport.handshake. At once on a session whose handshake is done. */
  handshake(signal?: AbortSignal): Promise<void> {
    let s: http2.ClientHttp2Session;
    try {
      s = this.get();
    } catch (err) {
      return Promise.reject(this.transportError(err, this.peer));
    }
    if (!s.connecting) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (err?: ConnectError) => {
        s.off('connect', onConnect);
        s.off('error', onError);
        s.off('close', onClose);
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve();
      };
      const onConnect = () => done();
      const onError = (err: unknown) => done(this.transportError(err, this.peer));
      const onClose = () =>
        done(new ConnectError('the connection closed during its handshake', Code.Unavailable));
      const onAbort = () => done(new ConnectError('the call was cancelled', Code.Canceled));
      s.once('connect', onConnect);
      s.once('error', onError);
      s.once('close', onClose);
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Opens a request stream, counting it so an idle session does not keep the process alive. */
  request(headers: http2.OutgoingHttpHeaders): http2.ClientHttp2Stream {
    const session = this.get();
    const stream = session.request(headers, { endStream: false });
    const open = this.calls(session) + 1;
    this.active.set(session, open);
    if (open === 1) session.ref();
    stream.once('close', () => {
      const left = this.calls(session) - 1;
      this.active.set(session, left);
      if (left === 0 && !session.destroyed) session.unref();
    });
    return stream;
  }

  private calls(s: http2.ClientHttp2Session): number {
    return this.active.get(s) ?? 0;
  }

  private get(): http2.ClientHttp2Session {
    const cur = this.session;
    if (cur && !cur.closed && !cur.destroyed) return cur;
    const s = http2.connect(this.o.url, this.o.session);
    const window = this.o.connectionWindow;
    if (window !== undefined) {
      s.once('localSettings', () => {
        if (!s.destroyed) s.setLocalWindowSize(window);
      });
    }
    // Failures reach the open streams; the session itself needs no handler.
    s.on('error', () => {});
    const forget = () => {
      if (this.session === s) {
        this.session = undefined;
        clearInterval(this.pinger);
      }
    };
    s.on('goaway', forget);
    s.on('close', forget);
    if (this.o.idleTimeoutMs) s.setTimeout(this.o.idleTimeoutMs, () => this.calls(s) === 0 && s.close());
    if (this.o.pingIntervalMs) {
      clearInterval(this.pinger);
      const interval = this.o.pingIntervalMs;
      this.pinger = setInterval(() => {
        if (this.calls(s) === 0 || s.destroyed) return;
        // Every call on the session fails with it: the peer is unreachable (hung, cut off), retryable.
        const unanswered = new ConnectError(
          `${this.peer} unreachable: keepalive ping not answered within ${interval} ms; retry`,
          Code.Unavailable,
        );
        const timer = setTimeout(() => s.destroy(unanswered), interval);
        timer.unref();
        s.ping((err) => {
          clearTimeout(timer);
          if (err && !s.destroyed) s.destroy(err);
        });
      }, interval);
      this.pinger.unref();
    }
    s.unref();
    this.session = s;
    return s;
  }
}

class ClientCall<I extends DescMessage, O extends DescMessage> {
  private readonly stream: http2.ClientHttp2Stream;
  private readonly parser: FrameParser;
  private readonly queue: Uint8Array[] = [];
  private failure: ConnectError | undefined;
  private ended = false;
  private wake: (() => void) | undefined;
  private headers: http2.IncomingHttpHeaders | undefined;
  private trailers: http2.IncomingHttpHeaders | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly onAbort: () => void;
  readonly trailer = new Headers();
  private readonly peer: string;
  private readonly resetCodes: boolean;

  constructor(
    holder: SessionHolder,
    private readonly method: DescMethodUnary<I, O> | DescMethodStreaming<I, O>,
    maxMessageBytes: number,
    private readonly signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: ConstructorParameters<typeof Headers>[0] | undefined,
  ) {
    this.parser = new FrameParser(maxMessageBytes);
    this.peer = holder.peer;
    this.resetCodes = holder.resetCodes;
    const h: http2.OutgoingHttpHeaders = {
      ':method': 'POST',
      ':path': `${holder.pathPrefix}/${method.parent.typeName}/${method.name}`,
      'content-type': 'application/grpc+proto',
      te: 'trailers',
    };
    if (holder.userAgent) h['user-agent'] = holder.userAgent;
    if (timeoutMs !== undefined) h['grpc-timeout'] = formatTimeout(timeoutMs);
    if (header) {
      new Headers(header).forEach((v, k) => {
        h[k] = v;
      });
    }
    this.onAbort = () => {
      const reason: unknown = signal?.reason;
      this.fail(
        reason instanceof ConnectError ? reason : new ConnectError('the call was cancelled', Code.Canceled),
        http2.constants.NGHTTP2_CANCEL,
      );
    };
    try {
      this.stream = holder.request(h);
    } catch (err) {
      this.stream = undefined as never;
      this.failure = holder.transportError(err, holder.peer);
      return;
    }
    const { stream } = this;
    if (timeoutMs !== undefined) {
      this.timer = setTimeout(
        () =>
          this.fail(
            new ConnectError('the deadline expired', Code.DeadlineExceeded),
            http2.constants.NGHTTP2_CANCEL,
          ),
        timeoutMs,
      );
    }
    if (signal?.aborted) this.onAbort();
    else signal?.addEventListener('abort', this.onAbort, { once: true });
    stream.on('response', (headers) => {
      this.headers = headers;
      this.notify();
    });
    stream.on('trailers', (trailers) => {
      this.trailers = trailers;
    });
    stream.on('data', (chunk: Buffer) => {
      try {
        for (const m of this.parser.push(chunk)) this.queue.push(m);
      } catch (err) {
        const fe = err as FrameError;
        this.fail(new ConnectError(fe.message, fe.code), http2.constants.NGHTTP2_CANCEL);
      }
      if (this.queue.length >= 16) stream.pause();
      this.notify();
    });
    stream.on('end', () => {
      this.ended = true;
      this.notify();
    });
    stream.on('error', (err) => {
      const rst = stream.rstCode;
      if (this.resetCodes && (err as { code?: unknown }).code === 'ERR_HTTP2_STREAM_ERROR' && rst) {
        // The server reset this stream (its session lives on): the reset's own code.
        this.fail(resetError(holder.peer, rst, err));
        return;
      }
      this.fail(holder.transportError(err, holder.peer));
    });
    stream.on('close', () => {
      clearTimeout(this.timer);
      signal?.removeEventListener('abort', this.onAbort);
      if (!this.ended && !this.failure) {
        const code = stream.rstCode;
        this.fail(
          new ConnectError(
            code === http2.constants.NGHTTP2_CANCEL
              ? 'the server reset the stream with CANCEL'
              : `the stream was reset (HTTP/2 error ${code})`,
            codeFromRstCode(code ?? http2.constants.NGHTTP2_INTERNAL_ERROR),
          ),
        );
      }
      this.ended = true;
      this.notify();
    });
  }

  private fail(err: ConnectError, rst?: number): void {
    if (this.failure) return;
    this.failure = err;
    clearTimeout(this.timer);
    if (rst === http2.constants.NGHTTP2_CANCEL && this.stream) cancelStream(this.stream);
    else if (rst !== undefined && this.stream && !this.stream.destroyed) this.stream.close(rst);
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private waitForEvent(): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
    });
  }

  /** Writes the request messages with backpressure, then half-closes. */
  sendAll(input: AsyncIterable<MessageInitShape<I>>): void {
    if (this.failure) return;
    const { stream } = this;
    const schema = this.method.input;
    void (async () => {
      try {
        for await (const m of input) {
          if (this.failure || stream.destroyed) return;
          const msg = isMessage(m, schema) ? m : create(schema, m as MessageInitShape<I>);
          if (!stream.write(encodeFrame(schema, msg))) await drained(stream);
        }
        if (!stream.destroyed) stream.end();
      } catch (err) {
        // The caller's request stream failed: the call fails with its error.
        this.fail(ConnectError.from(err), http2.constants.NGHTTP2_CANCEL);
      }
    })();
  }

  /** Waits for the response headers; a trailers-only error response throws here. */
  async response(): Promise<Headers> {
    for (;;) {
      if (this.headers) break;
      if (this.failure) throw this.failure;
      if (this.ended) throw new ConnectError('the stream closed before response headers', Code.Unavailable);
      await this.waitForEvent();
    }
    const h = this.headers;
    const status = Number(h[':status']);
    if (h['grpc-status'] !== undefined) {
      // Trailers-only: the status came with the headers.
      this.trailers = h;
      this.ended = true;
      const err = this.statusError();
      if (err) {
        this.fail(err);
        throw err;
      }
    } else if (status !== 200) {
      const err = new ConnectError(`HTTP status ${status} from the server`, codeFromHttpStatus(status));
      this.fail(err, http2.constants.NGHTTP2_CANCEL);
      throw err;
    }
    const type = String(h['content-type'] ?? '');
    if (!/^application\/grpc(\+proto)?(;|$)/.test(type)) {
      // Not a gRPC answer (an HTML error page, a misrouted request): its bytes are no messages.
      const err = new ConnectError(
        `${this.peer} answered with content-type "${type}", not application/grpc: is the URL a Haystack gateway or Envoy?`,
        Code.Unknown,
      );
      this.fail(err, http2.constants.NGHTTP2_CANCEL);
      throw err;
    }
    return toHeaders(h);
  }

  /** The status in the trailers as an error; undefined for OK. */
  private statusError(): ConnectError | undefined {
    const t = this.trailers;
    const rst = this.stream?.rstCode;
    // The server reset the stream after its headers (its end came before the reset's error).
    if (!t && rst && this.resetCodes) return resetError(this.peer, rst);
    if (!t) return new ConnectError('the server closed the stream without a status', Code.Internal);
    for (const [k, v] of Object.entries(t)) {
      if (!k.startsWith(':') && v !== undefined)
        this.trailer.set(k, Array.isArray(v) ? v.join(', ') : String(v));
    }
    const code = Number(t['grpc-status']);
    if (code === 0) return undefined;
    const message = decodeGrpcMessage(String(t['grpc-message'] ?? ''));
    const valid = Number.isInteger(code) && code > 0 && code <= 16;
    return new ConnectError(message, valid ? (code as Code) : Code.Unknown, toHeaders(t));
  }

  /** The response messages; throws the call's status at the end when it is not OK. */
  async *messages(): AsyncGenerator<MessageShape<O>> {
    const schema = this.method.output;
    try {
      for (;;) {
        const raw = this.queue.shift();
        if (raw) {
          if (this.queue.length < 8 && this.stream.isPaused()) this.stream.resume();
          yield fromBinary(schema, raw);
          continue;
        }
        if (this.failure) throw this.failure;
        if (this.ended) break;
        await this.waitForEvent();
      }
      if (this.parser.pending > 0)
        throw new ConnectError('the response ended inside a message', Code.Internal);
      const err = this.statusError();
      if (err) throw err;
    } finally {
      // The consumer stopped early (break, error): cancel what is still open.
      if (!this.ended && this.stream) cancelStream(this.stream);
      clearTimeout(this.timer);
      this.signal?.removeEventListener('abort', this.onAbort);
    }
  }
}

/** A server's RST_STREAM as its gRPC code (the resetCodes option). */
function resetError(peer: string, rst: number, cause?: unknown): ConnectError {
  return new ConnectError(
    `${peer} reset the stream (HTTP/2 error ${rst})`,
    codeFromRstCode(rst),
    undefined,
    undefined,
    cause,
  );
}

/** The default transportError: UNAVAILABLE naming the peer when it was unreachable (unreachable.ts), else INTERNAL. */
export function unreachableError(err: unknown, peer: string): ConnectError {
  if (err instanceof ConnectError) return err;
  const message = (err as Error | undefined)?.message ?? String(err);
  const code = unreachableCode(err);
  if (!code) return new ConnectError(message, Code.Internal, undefined, undefined, err);
  return new ConnectError(
    `${peer} unreachable (${code}): ${message}; retry`,
    Code.Unavailable,
    undefined,
    undefined,
    err,
  );
}
