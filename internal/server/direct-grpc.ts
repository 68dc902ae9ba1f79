import http2 from 'node:http2';
import { create, type DescMessage, isMessage, type MessageShape } from '@bufbuild/protobuf';
import {
  Code,
  ConnectError,
  createContextValues,
  type HandlerContext,
  type MethodImplSpec,
  type ServiceImplSpec,
} from '@connectrpc/connect';
import {
  decodeRequest,
  encodeFrame,
  encodeGrpcMessage,
  type FrameError,
  FrameParser,
  parseTimeout,
  toHeaders,
} from '../sdk/grpc-wire.js';
import type { Caller } from '../security/identity.js';
import { callerKey } from '../security/identity.js';

/**
 * A direct gRPC path for the data plane. connect-node routes every call through
 * its universal request/response layer (web Headers, linked abort signals,
 * several async-iterable stages per message), which costs ~0.15 ms of CPU per
 * call on each side, more than the store's own work for a 64 KiB blob. This
 * serves plain gRPC (application/grpc[+proto], no compression) for the
 * services that opt in straight from the HTTP/2 stream, with the same
 * ServiceImpl objects and HandlerContext; everything else (Connect, gRPC-Web,
 * compressed calls, HTTP/1.1) still goes to connect-node.
 */

/** Ends one call's observation (metrics, logs) with its error, if any. */
export type CallFinish = (err: unknown) => void;

export interface DirectGrpcOptions {
  services: ServiceImplSpec[];
  /** Largest request message accepted (RESOURCE_EXHAUSTED above). */
  maxMessageBytes: number;
  /** Tighter limits by request path (/package.Service/Method), with the message to answer above them. */
  limits?: ReadonlyMap<string, { maxBytes: number; advice: string }>;
  /** Aborted when the server stops: running calls end with UNAVAILABLE. */
  shutdownSignal: AbortSignal;
  /**
   * A call whose handler waits for request data that does not come for this long
   * ends DEADLINE_EXCEEDED (ListenerLimits.requestIdleMs); undefined: no limit.
   */
  requestIdleMs?: number;
  /** Called when a call starts; the returned function when it ends. */
  observe?: (spec: MethodImplSpec, signal: AbortSignal) => CallFinish;
  /** Who is calling, from the stream's connection (mTLS identity); put in the context values. */
  caller: (stream: http2.ServerHttp2Stream) => Caller;
  /** Refuses a call (throws a ConnectError) before its handler runs: the same check as connect-node's. */
  authorize: (method: MethodImplSpec['method'], ctx: HandlerContext) => void;
  /** Runs each call (`call`: the whole exchange) inside, e.g. a tracing span from its headers. */
  around?: (
    spec: MethodImplSpec,
    headers: http2.IncomingHttpHeaders,
    call: () => Promise<void>,
  ) => Promise<void>;
}

/** Keys of a call's status and framing, never taken from a trailer or error metadata set by code. */
const PROTOCOL_TRAILERS = new Set([
  'grpc-status',
  'grpc-message',
  'grpc-status-details-bin',
  'content-type',
  'content-length',
  'grpc-encoding',
  'grpc-accept-encoding',
  'te',
  'trailer',
]);

/** Inbound messages buffered before the stream is paused (HTTP/2 flow control then holds the client). */
const HIGH_WATER = 16;

/** Bytes past an oversized message's declared end still read before answering anyway (a few frames). */
const DRAIN_SLACK = 64 * 1024;

/** Longest an oversized message is read for (drainFirst): a declared 4 GiB dribbled in does not hold the stream. */
const DRAIN_MAX_MS = 60_000;

export class DirectGrpcServer {
  private readonly methods = new Map<string, MethodImplSpec>();

  constructor(private readonly o: DirectGrpcOptions) {
    for (const s of o.services) {
      for (const m of Object.values(s.methods))
        this.methods.set(`/${s.service.typeName}/${m.method.name}`, m);
    }
  }

  /** Serves the stream when it is a plain gRPC call of a registered method; false leaves it to connect-node. */
  handle(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): boolean {
    if (headers[':method'] !== 'POST') return false;
    const spec = this.methods.get(headers[':path'] ?? '');
    if (!spec) return false;
    const type = headers['content-type'];
    if (type !== 'application/grpc' && type !== 'application/grpc+proto') return false;
    const encoding = headers['grpc-encoding'];
    if (encoding !== undefined && encoding !== 'identity') return false;
    new DirectCall(stream, headers, spec, this.o).start();
    return true;
  }
}

class DirectCall {
  private readonly controller = new AbortController();
  private readonly parser: FrameParser;
  private readonly limit: { maxBytes: number; advice: string } | undefined;
  private readonly queue: Uint8Array[] = [];
  private inputEnded = false;
  private inputError: ConnectError | undefined;
  private wake: (() => void) | undefined;
  private responded = false;
  private finished = false;
  private timer: NodeJS.Timeout | undefined;
  /** When the last request bytes arrived (performance.now()); the request idle limit counts from it. */
  private lastInput = performance.now();
  private idleTimer: NodeJS.Timeout | undefined;
  private responseHeader: Headers | undefined;
  private responseTrailer: Headers | undefined;
  private readonly ctx: HandlerContext;
  /** Bytes still to discard before answering an oversized message (drainFirst); undefined: none. */
  private drainBudget: number | undefined;
  /** Set once the answer waits for the request's end (drainFirst): called when it may go. */
  private drained: (() => void) | undefined;

  constructor(
    private readonly stream: http2.ServerHttp2Stream,
    private readonly headers: http2.IncomingHttpHeaders,
    private readonly spec: MethodImplSpec,
    private readonly o: DirectGrpcOptions,
  ) {
    this.limit = o.limits?.get(headers[':path'] ?? '');
    this.parser = new FrameParser(this.limit?.maxBytes ?? o.maxMessageBytes);
    const self = this;
    let requestHeader: Headers | undefined;
    let deadline: number | undefined;
    this.ctx = {
      method: spec.method,
      service: spec.method.parent,
      signal: this.controller.signal,
      timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
      requestMethod: 'POST',
      get requestHeader() {
        requestHeader ??= toHeaders(headers);
        return requestHeader;
      },
      get responseHeader() {
        self.responseHeader ??= new Headers();
        return self.responseHeader;
      },
      get responseTrailer() {
        self.responseTrailer ??= new Headers();
        return self.responseTrailer;
      },
      protocolName: 'grpc',
      values: createContextValues().set(callerKey, o.caller(stream)),
      url: `http://${headers[':authority'] ?? 'localhost'}${headers[':path']}`,
    };
    const timeout = parseTimeout(headers['grpc-timeout'] as string | undefined);
    if (timeout !== undefined && !Number.isNaN(timeout)) {
      deadline = Date.now() + timeout;
      this.timer = setTimeout(
        () =>
          this.abort(
            new ConnectError('the deadline expired before the call finished', Code.DeadlineExceeded),
          ),
        timeout,
      );
    } else if (Number.isNaN(timeout)) {
      this.inputError = new ConnectError(
        `malformed grpc-timeout header "${String(headers['grpc-timeout'])}"`,
        Code.InvalidArgument,
      );
    }
  }

  start(): void {
    const { stream } = this;
    const onShutdown = () => this.abort(new ConnectError('the server is shutting down', Code.Unavailable));
    if (this.o.shutdownSignal.aborted) onShutdown();
    else this.o.shutdownSignal.addEventListener('abort', onShutdown, { once: true });
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('end', () => {
      this.inputEnded = true;
      this.notify();
    });
    // A reset before the request's END_STREAM: Node emits 'aborted' and then
    // 'end', and a handler must not take that 'end' for a complete request.
    stream.on('aborted', () => {
      if (this.finished) return;
      this.inputError ??= new ConnectError('the client cancelled the call', Code.Canceled);
      this.controller.abort(this.inputError);
      this.notify();
    });
    stream.on('error', () => {}); // 'close' follows and says what it means for the call
    stream.on('close', () => {
      clearTimeout(this.timer);
      this.o.shutdownSignal.removeEventListener('abort', onShutdown);
      if (!this.finished) {
        this.finished = true;
        this.controller.abort(new ConnectError('the client cancelled the call', Code.Canceled));
      }
      this.notify();
    });
    const finish = this.o.observe?.(this.spec, this.controller.signal);
    const call = () => this.dispatch();
    (this.o.around ? this.o.around(this.spec, this.headers, call) : call()).then(
      () => {
        this.end(undefined);
        finish?.(undefined);
      },
      (err: unknown) => {
        const reason = this.controller.signal.aborted ? this.controller.signal.reason : err;
        this.end(reason);
        finish?.(reason);
      },
    );
  }

  private async dispatch(): Promise<void> {
    const { spec, ctx } = this;
    this.o.authorize(spec.method, ctx);
    const output = spec.method.output;
    switch (spec.kind) {
      case 'unary': {
        const res = await spec.impl(await this.single(), ctx);
        await this.send(output, res);
        return;
      }
      case 'server_streaming': {
        for await (const res of spec.impl(await this.single(), ctx)) {
          if (this.finished) return;
          await this.send(output, res);
        }
        return;
      }
      case 'client_streaming': {
        const res = await spec.impl(this.requests(), ctx);
        await this.send(output, res);
        return;
      }
      case 'bidi_streaming': {
        for await (const res of spec.impl(this.requests(), ctx)) {
          if (this.finished) return;
          await this.send(output, res);
        }
        return;
      }
    }
  }

  private onData(chunk: Buffer): void {
    this.lastInput = performance.now();
    if (this.inputError) {
      if (this.drainBudget !== undefined) {
        this.drainBudget -= chunk.length;
        if (this.drainBudget < 0) this.drained?.();
      }
      return;
    }
    try {
      for (const m of this.parser.push(chunk)) this.queue.push(m);
    } catch (err) {
      const fe = err as FrameError;
      const advice = fe.code === Code.ResourceExhausted ? this.limit?.advice : undefined;
      this.inputError = new ConnectError(advice ? `${fe.message}: ${advice}` : fe.message, fe.code);
      // Counted from this chunk, which held the prefix: an upper bound on what is left.
      if (fe.declaredBytes !== undefined) this.drainBudget = fe.declaredBytes + DRAIN_SLACK;
    }
    if (this.queue.length >= HIGH_WATER) this.stream.pause();
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** The next raw inbound message; undefined at the end of the request stream. */
  private async nextRaw(): Promise<Uint8Array | undefined> {
    for (;;) {
      if (this.inputError) throw this.inputError;
      const m = this.queue.shift();
      if (m) {
        if (this.queue.length < HIGH_WATER / 2 && this.stream.isPaused()) {
          // Bytes the client sent while paused wait in the stream's buffer and refresh
          // the clock as they flow; if none did, its idle time starts now, not at the pause.
          this.lastInput = performance.now();
          this.stream.resume();
        }
        return m;
      }
      if (this.controller.signal.aborted) throw this.controller.signal.reason;
      if (this.inputEnded) {
        if (this.parser.pending > 0) {
          throw new ConnectError('the request stream ended inside a message', Code.InvalidArgument);
        }
        return undefined;
      }
      await this.inputArrives();
    }
  }

  /**
   * Waits until request data, its end or a failure is there, for at most the
   * request idle limit counted from the last bytes received: a client that
   * vanished without its connection closing (a peer's half-open socket) or that
   * stalls ends the call DEADLINE_EXCEEDED, releasing whatever the handler holds
   * (a blob's write lock, reserved space).
   */
  private async inputArrives(): Promise<void> {
    const ms = this.o.requestIdleMs;
    try {
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        if (ms === undefined) return;
        const check = () => {
          if (this.wake !== resolve) return;
          const idle = performance.now() - this.lastInput;
          if (idle < ms) {
            this.idleTimer = setTimeout(check, Math.ceil(ms - idle));
            return;
          }
          this.abort(
            new ConnectError(
              `no request data for ${ms} ms: the call is cancelled (LISTEN_REQUEST_IDLE_TIMEOUT); send without pauses or retry`,
              Code.DeadlineExceeded,
            ),
          );
          this.notify();
        };
        this.idleTimer = setTimeout(check, Math.max(1, Math.ceil(ms - (performance.now() - this.lastInput))));
      });
    } finally {
      clearTimeout(this.idleTimer);
    }
  }

  private decode(bytes: Uint8Array): MessageShape<DescMessage> {
    return decodeRequest(this.spec.method.input, bytes);
  }

  private async single(): Promise<MessageShape<DescMessage>> {
    const first = await this.nextRaw();
    if (first === undefined) throw new ConnectError('the request carried no message', Code.Unimplemented);
    if ((await this.nextRaw()) !== undefined) {
      throw new ConnectError('the request carried more than one message', Code.Unimplemented);
    }
    return this.decode(first);
  }

  private async *requests(): AsyncGenerator<MessageShape<DescMessage>> {
    for (;;) {
      const raw = await this.nextRaw();
      if (raw === undefined) return;
      yield this.decode(raw);
    }
  }

  private respond(): void {
    this.responded = true;
    const headers: http2.OutgoingHttpHeaders = { ':status': 200, 'content-type': 'application/grpc+proto' };
    this.responseHeader?.forEach((v, k) => {
      headers[k] = v;
    });
    this.stream.respond(headers, { waitForTrailers: true });
  }

  private async send(schema: DescMessage, init: unknown): Promise<void> {
    if (this.finished || this.stream.destroyed || this.stream.closed) throw this.abortReason();
    const msg = isMessage(init, schema) ? init : create(schema, init as never);
    const frame = encodeFrame(schema, msg);
    if (!this.responded) this.respond();
    if (this.stream.write(frame)) return;
    // Wait for the client to take what is buffered (bounded memory per stream).
    await new Promise<void>((resolve) => {
      const done = () => {
        this.stream.off('drain', done);
        this.stream.off('close', done);
        resolve();
      };
      this.stream.on('drain', done);
      this.stream.on('close', done);
    });
    if (this.finished || this.stream.destroyed) throw this.abortReason();
  }

  private abortReason(): ConnectError {
    const r: unknown = this.controller.signal.reason;
    return r instanceof ConnectError ? r : new ConnectError('the call was cancelled', Code.Canceled);
  }

  /** Aborts the handler and answers with `reason` now (deadline, shutdown). */
  private abort(reason: ConnectError): void {
    if (this.finished) return;
    this.controller.abort(reason);
    this.end(reason);
  }

  /**
   * Holds the answer to an oversized message until the request has ended, reading
   * and discarding the rest (nothing kept: memory stays bounded). RFC 9113 §8.1
   * allows answering first, but then the client's remaining DATA arrives on a
   * closed stream: Node's HTTP/2 server counts those frames invalid and resets the
   * session (ENHANCE_YOUR_CALM), and Envoy turns the early answer into a reset
   * (envoyproxy/envoy#30149) — either way the caller never saw RESOURCE_EXHAUSTED.
   * Bounded by the declared length (+ DRAIN_SLACK), the request idle limit,
   * DRAIN_MAX_MS and the call's deadline; past any of them the answer goes as
   * before. True: deferred.
   */
  private drainFirst(err: unknown): boolean {
    if (this.drained || this.drainBudget === undefined || err !== this.inputError) return false;
    const { stream } = this;
    if (this.drainBudget < 0 || this.finished || stream.readableEnded || stream.destroyed || stream.closed)
      return false;
    this.queue.length = 0; // messages before the oversized one: not needed for the answer
    let idle: NodeJS.Timeout | undefined;
    const cap = setTimeout(() => go(), DRAIN_MAX_MS);
    const go = () => {
      clearTimeout(idle);
      clearTimeout(cap);
      stream.off('end', go);
      stream.off('close', go);
      this.end(err);
    };
    this.drained = go;
    stream.once('end', go);
    stream.once('close', go);
    const ms = this.o.requestIdleMs;
    if (ms !== undefined) {
      const check = () => {
        const quiet = performance.now() - this.lastInput;
        if (quiet >= ms) go();
        else idle = setTimeout(check, Math.ceil(ms - quiet));
      };
      idle = setTimeout(check, ms);
    }
    stream.resume();
    return true;
  }

  /** Sends the status in trailers. */
  private end(err: unknown): void {
    if (this.drainFirst(err)) return;
    if (this.finished || this.stream.destroyed || this.stream.closed) {
      this.finished = true;
      return;
    }
    this.finished = true;
    clearTimeout(this.timer);
    const ce = err === undefined ? undefined : ConnectError.from(err, Code.Internal);
    const trailers: http2.OutgoingHttpHeaders = {};
    // An error passed on from a peer carries the peer's trailers as metadata, its
    // grpc-status among them: only the other keys go out, as connect-node does, or
    // the peer's status would replace this call's (docs/faults.md N5).
    const copy = (v: string, k: string) => {
      if (!PROTOCOL_TRAILERS.has(k.toLowerCase()) && !k.startsWith(':')) trailers[k] = v;
    };
    this.responseTrailer?.forEach(copy);
    ce?.metadata.forEach(copy);
    trailers['grpc-status'] = String(ce ? ce.code : 0);
    if (ce) trailers['grpc-message'] = encodeGrpcMessage(ce.rawMessage);
    // Whatever the client still sends is not needed; keep flow control moving.
    this.stream.resume();
    try {
      // Headers, then the status in trailers, even when nothing else was sent (no
      // trailers-only response): proxies such as Envoy's gRPC-Web filter then carry
      // the status the same way as connect-node's.
      if (!this.responded) this.respond();
      this.stream.once('wantTrailers', () => {
        try {
          if (!this.stream.destroyed) this.stream.sendTrailers(trailers);
          // RFC 9113 §8.1: a complete response before the whole request; RST_STREAM(NO_ERROR)
          // tells the client to stop sending, so its stream (and process) can end. Once the
          // trailers are out: a reset submitted with them would cancel them.
          setImmediate(() => {
            if (!this.stream.readableEnded && !this.stream.destroyed)
              this.stream.close(http2.constants.NGHTTP2_NO_ERROR);
          });
        } catch {
          this.stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
        }
      });
      this.stream.end();
    } catch {
      // The stream went away meanwhile, or a handler set a header Node refuses:
      // the client sees a reset (INTERNAL) rather than the process failing.
      if (!this.stream.destroyed) this.stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    }
  }
}
