import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';

export interface HealthInput {
  /** A heartbeat stream from the store is open on this leader. */
  streamOpen: boolean;
  /** The store had a stream on this leader that ended (or errored). */
  streamEnded: boolean;
  /** Milliseconds since the last heartbeat (or since this leader took office, when none yet). */
  sinceLastHeartbeatMs: number;
  degradedAfterMs: number;
  downAfterMs: number;
}

/**
 * Health of a store from its heartbeats (pure). A stream that ended is DOWN at
 * once; otherwise the age of the last heartbeat decides: HEALTHY, then DEGRADED
 * after degradedAfterMs, DOWN after downAfterMs.
 */
export function evaluateHealth(h: HealthInput): StoreHealth {
  if (h.streamEnded && !h.streamOpen) return StoreHealth.DOWN;
  if (h.sinceLastHeartbeatMs >= h.downAfterMs) return StoreHealth.DOWN;
  if (h.sinceLastHeartbeatMs >= h.degradedAfterMs) return StoreHealth.DEGRADED;
  return StoreHealth.HEALTHY;
}

/** Order for Locate: HEALTHY first, then DEGRADED; DOWN and unknown are not served. */
export function healthRank(h: StoreHealth): number {
  switch (h) {
    case StoreHealth.HEALTHY:
      return 0;
    case StoreHealth.DEGRADED:
      return 1;
    default:
      return -1;
  }
}
