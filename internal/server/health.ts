import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type ConnectRouter } from '@connectrpc/connect';
import {
  Health,
  type HealthCheckResponse,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from '../../gen/grpc/health/v1/health_pb.js';

export { ServingStatus };

/**
 * grpc.health.v1.Health for one process: a status per service name ("" is the
 * whole server). Watch streams the current status and every change.
 */
export class HealthRegistry {
  private readonly status = new Map<string, ServingStatus>();
  private readonly watchers = new Set<() => void>();

  constructor(services: readonly string[]) {
    this.status.set('', ServingStatus.SERVING);
    for (const s of services) this.status.set(s, ServingStatus.SERVING);
  }

  set(service: string, status: ServingStatus): void {
    if (this.status.get(service) === status) return;
    this.status.set(service, status);
    for (const w of this.watchers) w();
  }

  /** Marks every service NOT_SERVING (used when draining on shutdown). */
  setAll(status: ServingStatus): void {
    for (const key of this.status.keys()) this.set(key, status);
  }

  get(service: string): ServingStatus | undefined {
    return this.status.get(service);
  }

  register(router: ConnectRouter): void {
    router.service(Health, {
      check: (req) => {
        const s = this.status.get(req.service);
        if (s === undefined) throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
        return create(HealthCheckResponseSchema, { status: s });
      },
      watch: (req, ctx) => this.watch(req.service, ctx.signal),
    });
  }

  private async *watch(service: string, signal: AbortSignal): AsyncGenerator<HealthCheckResponse> {
    let wake: (() => void) | undefined;
    const notify = () => wake?.();
    this.watchers.add(notify);
    signal.addEventListener('abort', notify);
    try {
      let last: ServingStatus | undefined;
      while (!signal.aborted) {
        const current = this.status.get(service) ?? ServingStatus.SERVICE_UNKNOWN;
        if (current !== last) {
          last = current;
          yield create(HealthCheckResponseSchema, { status: current });
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    } finally {
      this.watchers.delete(notify);
      signal.removeEventListener('abort', notify);
    }
  }
}
