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

/**
 * The order in which readers should try a blob's replicas: healthy before
 * degraded (down and unknown stores left out), and a random order among equals,
 * so the reads of a blob spread over all its replicas (the reason a hot blob
 * gets more of them) instead of all landing on the first one committed.
 */
export function readOrder<T extends { health: StoreHealth }>(
  replicas: T[],
  random: () => number = Math.random,
): T[] {
  return replicas
    .filter((r) => healthRank(r.health) >= 0)
    .map((r) => ({ r, rank: healthRank(r.health), key: random() }))
    .sort((a, b) => a.rank - b.rank || a.key - b.key)
    .map((x) => x.r);
}
