import { Code, ConnectError, type Interceptor } from '@connectrpc/connect';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { Logger } from './logger.js';

/**
 * Prometheus metrics of one process: RPC counts and latencies plus process metrics.
 *
 * No default labels: `instance` belongs to Prometheus (the scrape target) and
 * `service` is the gRPC service label of the RPC metrics. Which component and id
 * a target is comes from `haystack_process_info{role,id} 1`, joined in queries
 * with `* on(instance) group_left(role,id) haystack_process_info`.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly handled: Counter<'service' | 'method' | 'code'>;
  private readonly latency: Histogram<'service' | 'method'>;

  /** `service`: the component (store, directory, replication, gateway); `instance`: its id. */
  constructor(labels: { service: string; instance: string }) {
    collectDefaultMetrics({ register: this.registry });
    new Gauge({
      name: 'haystack_process_info',
      help: 'Always 1: the Haystack component (role) and its configured id',
      labelNames: ['role', 'id'],
      registers: [this.registry],
    }).set({ role: labels.service, id: labels.instance }, 1);
    this.handled = new Counter({
      name: 'haystack_rpc_handled_total',
      help: 'RPCs completed, by method and gRPC status code',
      labelNames: ['service', 'method', 'code'],
      registers: [this.registry],
    });
    this.latency = new Histogram({
      name: 'haystack_rpc_duration_seconds',
      help: 'RPC duration from first byte to the end of the response stream',
      labelNames: ['service', 'method'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [this.registry],
    });
  }

  /**
   * Starts observing one call: the returned function records its status and
   * duration and logs it: every call at debug, failures at warn (client errors)
   * or error (server faults) with the gRPC code.
   */
  startCall(log: Logger, service: string, method: string, signal: AbortSignal): (err: unknown) => void {
    const started = performance.now();
    return (err) => {
      const code = err === undefined ? 'ok' : Code[ConnectError.from(err, Code.Internal).code];
      const seconds = (performance.now() - started) / 1000;
      this.handled.inc({ service, method, code: String(code).toLowerCase() });
      this.latency.observe({ service, method }, seconds);
      if (err === undefined) {
        if (log.isLevelEnabled('debug')) {
          log.debug({ rpc: `${service}/${method}`, ms: Math.round(seconds * 1000) }, 'rpc ok');
        }
        return;
      }
      const ce = ConnectError.from(err, Code.Internal);
      if (signal.aborted || ce.code === Code.Canceled) {
        // The client went away (cancelled, deadline, closed stream): not a server fault.
        log.debug({ rpc: `${service}/${method}`, code: Code[ce.code], err: ce.rawMessage }, 'rpc cancelled');
        return;
      }
      const serverFault = [Code.Internal, Code.Unknown, Code.DataLoss].includes(ce.code);
      log[serverFault ? 'error' : 'warn'](
        {
          rpc: `${service}/${method}`,
          code: Code[ce.code],
          ms: Math.round(seconds * 1000),
          err: ce.rawMessage,
        },
        'rpc failed',
      );
    };
  }

  /** The same observation as a connect-node interceptor. */
  interceptor(log: Logger): Interceptor {
    return (next) => async (req) => {
      const finish = this.startCall(log, req.service.typeName, req.method.name, req.signal);
      let res: Awaited<ReturnType<typeof next>>;
      try {
        res = await next(req);
      } catch (err) {
        finish(err);
        throw err;
      }
      if (!res.stream) {
        finish(undefined);
        return res;
      }
      const inner = res.message;
      async function* timed() {
        try {
          yield* inner;
          finish(undefined);
        } catch (err) {
          finish(err);
          throw err;
        }
      }
      return { ...res, message: timed() };
    };
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
