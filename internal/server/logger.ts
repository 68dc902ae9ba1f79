import { type Logger, pino } from 'pino';

export type { Logger };

/** One JSON line per event on stderr, tagged with the service and instance. */
export function createLogger(service: string, instance: string, level: string): Logger {
  return pino({ level, base: { service, instance } }, pino.destination({ fd: 2, sync: false }));
}
