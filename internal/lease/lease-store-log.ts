import type { Logger } from '../server/logger.js';
import type { LeaseKeeperOptions } from './lease-keeper.js';

/**
 * How a process logs its lease keeper's store calls: every failure at debug (a renewal
 * fails on every Redis blip), the first failure of an outage and a reminder at most every
 * `repeatMs` at warn (across outages: a flapping store logs one warn per `repeatMs`), and the
 * recovery from an outage that was warned about at info with how long it took. A lease store
 * that stays unreachable (a Redis client that stopped redialling left both replication
 * managers on standby for minutes, docs/faults.md) is then in the log at the default level,
 * with its error.
 */
export function leaseStoreLogging(
  log: Logger,
  repeatMs = 30_000,
): Pick<LeaseKeeperOptions, 'onError' | 'onRecovered'> {
  // Not reset by a recovery: a store that fails every other call logs one warn (and one
  // recovery) per repeatMs, not one per failure.
  let lastWarnAt = Number.NEGATIVE_INFINITY;
  let warnedThisOutage = false;
  return {
    onError: (op, err) => {
      const msg = err instanceof Error ? err.message : String(err);
      const now = performance.now();
      if (now - lastWarnAt >= repeatMs) {
        log.warn(
          { op, err: msg, repeated: warnedThisOutage },
          'lease store unreachable: this instance cannot take or keep its lease',
        );
        lastWarnAt = now;
        warnedThisOutage = true;
      } else {
        log.debug({ op, err: msg }, 'lease store call failed');
      }
    },
    onRecovered: (downMs) => {
      const ms = Math.round(downMs);
      if (warnedThisOutage) log.info({ downMs: ms }, 'lease store reachable again');
      else log.debug({ downMs: ms }, 'lease store reachable again');
      warnedThisOutage = false;
    },
  };
}
