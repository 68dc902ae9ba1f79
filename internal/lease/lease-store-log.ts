import type { Logger } from '../server/logger.js';
import type { LeaseKeeperOptions } from './lease-keeper.js';

/**
 * How a process logs its lease keeper's store calls: every failure at debug (a renewal
 * fails on every Redis blip), the first failure of an outage and a reminder at most every
 * `repeatMs` while calls keep failing at warn, and the recovery at info with how long it
 * took. A lease store that stays unreachable (a Redis client that stopped redialling left
 * both replication managers on standby for minutes, docs/faults.md) is then in the log at the
 * default level, with its error.
 */
export function leaseStoreLogging(
  log: Logger,
  repeatMs = 30_000,
): Pick<LeaseKeeperOptions, 'onError' | 'onRecovered'> {
  let warnedAt: number | null = null;
  return {
    onError: (op, err) => {
      const msg = err instanceof Error ? err.message : String(err);
      const now = performance.now();
      if (warnedAt === null || now - warnedAt >= repeatMs) {
        log.warn(
          { op, err: msg, repeated: warnedAt !== null },
          'lease store unreachable: this instance cannot take or keep its lease',
        );
        warnedAt = now;
      } else {
        log.debug({ op, err: msg }, 'lease store call failed');
      }
    },
    onRecovered: (downMs) => {
      warnedAt = null;
      log.info({ downMs: Math.round(downMs) }, 'lease store reachable again');
    },
  };
}
