/**
 * Distributed tracing (OpenTelemetry), all hooks in one place. Off unless
 * `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set:
 * then each server process exports its spans by OTLP/HTTP (the standard OTEL_*
 * variables apply: OTEL_BSP_SCHEDULE_DELAY, OTEL_EXPORTER_OTLP_HEADERS...).
 *
 * Context crosses processes as W3C Trace Context (`traceparent`, `tracestate`;
 * https://www.w3.org/TR/trace-context/) in gRPC metadata, injected and extracted
 * explicitly by our own interceptors — no instrumentation patches Node's http2:
 * - servers: `serverInterceptor()` (connect-node routes) and `traceDirectCall`
 *   (the direct gRPC path) open a SERVER span around the handler;
 * - clients: `tracedTransport(t)` wraps any Connect transport (connect-node's and
 *   the direct one) with a CLIENT span and the injected headers.
 * Envoy joins the same traces with its OpenTelemetry tracer (envoy-config.ts).
 */
import type { IncomingHttpHeaders } from 'node:http2';
import { ConnectError, type Interceptor, type Transport } from '@connectrpc/connect';
import {
  type Context,
  context,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type TextMapGetter,
  trace,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, NodeTracerProvider } from '@opentelemetry/sdk-trace-node';

let enabled = false;
const tracer = () => trace.getTracer('haystack');

export interface Tracing {
  /** Flushes pending spans and stops exporting. */
  shutdown(): Promise<void>;
}

/**
 * Starts exporting spans of this process when an OTLP endpoint is configured;
 * undefined (tracing off, no cost on the call path) otherwise. A malformed
 * endpoint throws an Error naming the variable.
 */
export function startTracing(service: string, instance: string, env = process.env): Tracing | undefined {
  const names = ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'OTEL_EXPORTER_OTLP_ENDPOINT'] as const;
  const configured = names.filter((n) => (env[n] ?? '') !== '');
  if (configured.length === 0 || env.OTEL_SDK_DISABLED === 'true') return undefined;
  for (const n of configured) {
    if (!URL.canParse(env[n]!)) throw new Error(`${n}="${env[n]}" is not a URL (e.g. http://collector:4318)`);
  }
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({
      'service.name': `haystack-${service}`,
      'service.namespace': 'haystack',
      'service.instance.id': instance,
    }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
  });
  provider.register({ propagator: new W3CTraceContextPropagator() });
  enabled = true;
  return {
    async shutdown() {
      enabled = false;
      await provider.shutdown();
    },
  };
}

const headersGetter: TextMapGetter<Headers> = {
  get: (h, k) => h.get(k) ?? undefined,
  keys: (h) => [...h.keys()],
};

const http2Getter: TextMapGetter<IncomingHttpHeaders> = {
  get: (h, k) => h[k] as string | string[] | undefined,
  keys: (h) => Object.keys(h),
};

const rpcAttributes = (service: string, method: string) => ({
  'rpc.system': 'grpc',
  'rpc.service': service,
  'rpc.method': method,
});

/** Ends a span with the call's outcome (gRPC status code attribute, error status). */
function finish(span: Span, err: unknown): void {
  if (err === undefined) {
    span.setAttribute('rpc.grpc.status_code', 0); // OK
  } else {
    const ce = ConnectError.from(err);
    span.setAttribute('rpc.grpc.status_code', ce.code);
    span.setStatus({ code: SpanStatusCode.ERROR, message: ce.rawMessage });
  }
  span.end();
}

/** Runs each step of an iterable in `ctx` (generator bodies run in their caller's context otherwise). */
async function* within<T>(
  ctx: Context,
  src: AsyncIterable<T>,
  done: (err: unknown) => void,
): AsyncGenerator<T> {
  const it = src[Symbol.asyncIterator]();
  try {
    for (;;) {
      const r = await context.with(ctx, () => it.next());
      if (r.done) break;
      yield r.value;
    }
  } catch (err) {
    done(err);
    throw err;
  } finally {
    // An early return (the consumer stopped) ends the span too; done is idempotent.
    done(undefined);
  }
}

function once(f: (err: unknown) => void): (err: unknown) => void {
  let called = false;
  return (err) => {
    if (called) return;
    called = true;
    f(err);
  };
}

function serverSpan(service: string, method: string, parent: Context): { span: Span; ctx: Context } {
  const span = tracer().startSpan(
    `${service}/${method}`,
    { kind: SpanKind.SERVER, attributes: rpcAttributes(service, method) },
    parent,
  );
  return { span, ctx: trace.setSpan(parent, span) };
}

/** A SERVER span around each call served by connect-node, child of the caller's `traceparent`. */
export function serverInterceptor(): Interceptor {
  return (next) => async (req) => {
    if (!enabled) return next(req);
    const parent = propagation.extract(ROOT_CONTEXT, req.header, headersGetter);
    const { span, ctx } = serverSpan(req.service.typeName, req.method.name, parent);
    const done = once((err) => finish(span, err));
    try {
      const res = await context.with(ctx, () => next(req));
      if (!res.stream) {
        done(undefined);
        return res;
      }
      return { ...res, message: within(ctx, res.message, done) };
    } catch (err) {
      done(err);
      throw err;
    }
  };
}

/** The same for the direct gRPC path: runs `call` (the whole call) inside a SERVER span. */
export function traceDirectCall(
  service: string,
  method: string,
  headers: IncomingHttpHeaders,
  call: () => Promise<void>,
): Promise<void> {
  if (!enabled) return call();
  const { span, ctx } = serverSpan(service, method, propagation.extract(ROOT_CONTEXT, headers, http2Getter));
  return context.with(ctx, call).then(
    () => finish(span, undefined),
    (err: unknown) => {
      finish(span, err);
      throw err;
    },
  );
}

/** Starts a CLIENT span in the active context and returns the headers carrying it. */
function clientSpan(
  service: string,
  method: string,
  header: ConstructorParameters<typeof Headers>[0] | undefined,
): { span: Span; headers: Headers } {
  const span = tracer().startSpan(`${service}/${method}`, {
    kind: SpanKind.CLIENT,
    attributes: rpcAttributes(service, method),
  });
  const headers = new Headers(header);
  propagation.inject(trace.setSpan(context.active(), span), headers, {
    set: (h, k, v) => h.set(k, v),
  });
  return { span, headers };
}

/**
 * `t` with a CLIENT span per call and W3C trace context in its request headers
 * (a no-op wrapper while tracing is off).
 */
export function tracedTransport(t: Transport): Transport {
  return {
    async unary(method, signal, timeoutMs, header, input, contextValues) {
      if (!enabled) return t.unary(method, signal, timeoutMs, header, input, contextValues);
      const { span, headers } = clientSpan(method.parent.typeName, method.name, header);
      try {
        const res = await t.unary(method, signal, timeoutMs, headers, input, contextValues);
        finish(span, undefined);
        return res;
      } catch (err) {
        finish(span, err);
        throw err;
      }
    },
    async stream(method, signal, timeoutMs, header, input, contextValues) {
      if (!enabled) return t.stream(method, signal, timeoutMs, header, input, contextValues);
      const { span, headers } = clientSpan(method.parent.typeName, method.name, header);
      const done = once((err) => finish(span, err));
      try {
        const res = await t.stream(method, signal, timeoutMs, headers, input, contextValues);
        return { ...res, message: within(context.active(), res.message, done) };
      } catch (err) {
        done(err);
        throw err;
      }
    },
  };
}
