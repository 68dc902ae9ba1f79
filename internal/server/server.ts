import { setMaxListeners } from 'node:events';
import type http from 'node:http';
import http2 from 'node:http2';
import type { DescFile, DescService } from '@bufbuild/protobuf';
import { type ConnectRouter, createContextValues, type ServiceImplSpec } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import { file_grpc_health_v1_health } from '../../gen/grpc/health/v1/health_pb.js';
import { file_grpc_reflection_v1_reflection } from '../../gen/grpc/reflection/v1/reflection_pb.js';
import { file_grpc_reflection_v1alpha_reflection } from '../../gen/grpc/reflection/v1alpha/reflection_pb.js';
import { parseHostPort } from '../config/env.js';
import { authorizeCall, authorizeHttp, authzInterceptor } from '../security/authz.js';
import { callerKey } from '../security/identity.js';
import type { TransportSecurity } from '../security/tls-config.js';
import { callerOfConnection, callerOfRequest } from './caller.js';
import { startCertificateRenewal } from './cert-renewal.js';
import { guardDecoding } from './decode-guard.js';
import { DirectGrpcServer } from './direct-grpc.js';
import { HealthRegistry, ServingStatus } from './health.js';
import { DualProtocolListener, type Listener } from './listener.js';
import { DEFAULT_LISTENER_LIMITS, type ListenerLimits } from './listener-limits.js';
import type { Logger } from './logger.js';
import { Metrics } from './metrics.js';
import { registerReflection } from './reflection.js';
import { TlsListener } from './tls-listener.js';
import { serverInterceptor, traceDirectCall } from './tracing.js';

export type HttpRequest = http.IncomingMessage | http2.Http2ServerRequest;
export type HttpResponse = http.ServerResponse | http2.Http2ServerResponse;
/** A plain HTTP route; returns false when the request is not its to answer. */
export type HttpRoute = (req: HttpRequest, res: HttpResponse) => boolean | Promise<boolean>;

/** A tighter request-message limit for one method than the server's (READ_MAX_BYTES). */
export interface MessageLimit {
  maxBytes: number;
  /** The RESOURCE_EXHAUSTED message when a request message is larger: what to do instead. */
  advice: string;
}

/** A gRPC service this process implements. */
export interface ServiceRegistration {
  /** The service descriptor (for health and reflection). */
  desc: DescService;
  /** Registers the implementation on the router. */
  register(router: ConnectRouter): void;
  /**
   * The same implementation, to serve plain gRPC calls straight from HTTP/2
   * streams (see direct-grpc.ts): for data-plane services where per-call CPU
   * decides throughput.
   */
  direct?: ServiceImplSpec;
  /**
   * Per-method request-message limits (by proto method name, e.g. "Put") on the
   * direct path; `register` applies the same to connect-node (router.rpc options).
   */
  messageLimits?: Record<string, MessageLimit>;
}

export interface ServerOptions {
  /** Component name: store, directory, replication, gateway. */
  component: string;
  /** Instance id (store id, directory id...). */
  instance: string;
  listen: string;
  log: Logger;
  services: ServiceRegistration[];
  httpRoutes?: HttpRoute[];
  /** Longest time a graceful shutdown waits for in-flight calls. */
  shutdownGraceMs: number;
  /** Called once draining begins: end long-lived streams, stop background work. */
  onDrain?: () => void | Promise<void>;
  /** Called after the last call finished: flush and close resources. */
  onClose?: () => void | Promise<void>;
  /** An existing Metrics object, when the component registers its own metrics on it. */
  metrics?: Metrics;
  /** mTLS (certificate, CA) and who is a directory peer; or plaintext (INSECURE_PLAINTEXT). */
  security: TransportSecurity;
  /** Listener timeouts and stream cap (default DEFAULT_LISTENER_LIMITS). */
  limits?: ListenerLimits;
}

export interface RunningServer {
  host: string;
  port: number;
  health: HealthRegistry;
  metrics: Metrics;
  /** Graceful shutdown: stop accepting, drain (bounded), close. */
  close(): Promise<void>;
}

/** Largest request message: blob chunks are at most a few MiB; Put carries a whole (bounded) upload. */
const READ_MAX_BYTES = 256 * 1024 * 1024;

/**
 * Starts one Haystack server process: Connect, gRPC and gRPC-Web on one port,
 * grpc.health.v1, reflection, /metrics and graceful shutdown.
 */
export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { log } = opts;
  const addr = parseHostPort(opts.listen);
  if (!addr) throw new Error(`invalid listen address "${opts.listen}": expected HOST:PORT`);

  const serviceNames = opts.services.map((s) => s.desc.typeName);
  const health = new HealthRegistry(serviceNames);
  const metrics = opts.metrics ?? new Metrics({ service: opts.component, instance: opts.instance });
  const files: DescFile[] = [
    ...new Set<DescFile>([
      ...opts.services.map((s) => s.desc.file),
      file_grpc_health_v1_health,
      file_grpc_reflection_v1_reflection,
      file_grpc_reflection_v1alpha_reflection,
    ]),
  ];
  const reflected = [
    ...serviceNames,
    'grpc.health.v1.Health',
    'grpc.reflection.v1.ServerReflection',
    'grpc.reflection.v1alpha.ServerReflection',
  ];

  const shutdown = new AbortController();
  // Every call listens on the shutdown signal.
  setMaxListeners(0, shutdown.signal);
  const routes: HttpRoute[] = [
    async (req, res) => {
      if (req.method !== 'GET' || req.url !== '/metrics') return false;
      const { contentType, body } = await metrics.render();
      res.writeHead(200, { 'content-type': contentType });
      res.end(body);
      return true;
    },
    (req, res) => {
      if (req.method !== 'GET' || req.url !== '/healthz') return false;
      const ok = health.get('') === ServingStatus.SERVING;
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
      res.end(ok ? 'SERVING\n' : 'NOT_SERVING\n');
      return true;
    },
    ...(opts.httpRoutes ?? []),
  ];

  const handler = connectNodeAdapter({
    routes: (router) => {
      for (const s of opts.services) s.register(router);
      health.register(router);
      registerReflection(router, files, reflected);
      // Undecodable request bodies are INVALID_ARGUMENT on every protocol (decode-guard.ts).
      router.handlers.forEach((h, i) => {
        router.handlers[i] = guardDecoding(h, READ_MAX_BYTES);
      });
    },
    // Metrics first (outermost), so refused calls are counted with their status.
    interceptors: [metrics.interceptor(log), serverInterceptor(), authzInterceptor()],
    contextValues: (req) => createContextValues().set(callerKey, callerOfRequest(req, opts.security)),
    shutdownSignal: shutdown.signal,
    readMaxBytes: READ_MAX_BYTES,
    // Photos are already compressed: gzip would spend CPU for nothing. Compressed
    // requests are still accepted.
    compressMinBytes: Number.MAX_SAFE_INTEGER,
    fallback: (req, nodeRes) => {
      const res = nodeRes as unknown as HttpResponse;
      const denied = authorizeHttp(req.url ?? '/', callerOfRequest(req, opts.security));
      if (denied) {
        res.writeHead(denied.status, { 'content-type': 'text/plain' });
        res.end(denied.message);
        return;
      }
      void (async () => {
        for (const route of routes) {
          if (await route(req, res)) return;
        }
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found\n');
      })().catch((err: unknown) => {
        log.error({ err }, 'http route failed');
        if (!res.headersSent) res.writeHead(500);
        res.end();
      });
    },
  });

  const directSpecs = opts.services.flatMap((s) => (s.direct ? [s.direct] : []));
  const limits = opts.limits ?? DEFAULT_LISTENER_LIMITS;
  const direct =
    directSpecs.length > 0
      ? new DirectGrpcServer({
          services: directSpecs,
          maxMessageBytes: READ_MAX_BYTES,
          limits: new Map(
            opts.services.flatMap((s) =>
              Object.entries(s.messageLimits ?? {}).map(([m, l]) => [`/${s.desc.typeName}/${m}`, l] as const),
            ),
          ),
          shutdownSignal: shutdown.signal,
          requestIdleMs: limits.requestIdleMs,
          observe: (spec, signal) =>
            metrics.startCall(log, spec.method.parent.typeName, spec.method.name, signal),
          caller: (stream) => callerOfConnection(stream.session?.socket, opts.security),
          authorize: authorizeCall,
          around: (spec, headers, call) =>
            traceDirectCall(spec.method.parent.typeName, spec.method.name, headers, call),
        })
      : undefined;

  let inFlight = 0;
  let drained: (() => void) | undefined;
  const callEnded = () => {
    inFlight--;
    if (inFlight === 0) drained?.();
  };
  const onRequest = (req: HttpRequest, res: HttpResponse) => {
    inFlight++;
    res.once('close', callEnded);
    // An answer before the whole request (an early error of a client stream): RST_STREAM
    // (NO_ERROR) after the trailers, RFC 9113 §8.1, so the client stops sending and ends.
    if ('stream' in req) {
      res.once('finish', () => {
        if (!req.readableEnded && !req.stream.destroyed) req.stream.close(http2.constants.NGHTTP2_NO_ERROR);
      });
    }
    handler(req as never, res as never);
  };
  const onStream =
    direct &&
    ((stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
      if (!direct.handle(stream, headers)) return false;
      inFlight++;
      stream.once('close', callEnded);
      return true;
    });
  const tls =
    opts.security.mode === 'mtls' ? new TlsListener(onRequest, onStream, opts.security, limits) : undefined;
  const listener: Listener = tls ?? new DualProtocolListener(onRequest, onStream, limits);
  const bound = await listener.listen(addr.host, addr.port);
  const stopRenewal = startCertificateRenewal(opts.security, tls, log, metrics);
  log.info(
    { listen: `${bound.host}:${bound.port}`, services: serviceNames, transport: opts.security.mode },
    `${opts.component} serving`,
  );

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      log.info({ inFlight }, 'shutting down: draining');
      stopRenewal();
      health.setAll(ServingStatus.NOT_SERVING);
      listener.stopAccepting();
      await opts.onDrain?.();
      if (inFlight > 0) {
        await new Promise<void>((resolve) => {
          drained = resolve;
          setTimeout(resolve, opts.shutdownGraceMs).unref();
        });
      }
      if (inFlight > 0) log.warn({ inFlight }, 'grace period over: cancelling remaining calls');
      shutdown.abort();
      listener.destroyAll();
      await opts.onClose?.();
      log.info('stopped');
    })();
    return closing;
  };

  return { host: bound.host, port: bound.port, health, metrics, close };
}
