/**
 * The replica-count policy: how many replicas a blob should have given its access
 * rate. Pure and stateless apart from the cooling clock the caller keeps.
 *
 * - Rising is immediate: default normally; default + 1 at or above the access
 *   threshold; MAX_REPLICA_COUNT at or above the high threshold; never below the
 *   minimum, never above the maximum.
 * - Falling is slow: a blob keeps its raised target until its rate has stayed
 *   below the cool-down line for the whole grace period; then the target drops to
 *   what the rate asks for (never below the default). Removals then run one at a
 *   time (the planner issues one per blob).
 * - Hysteresis: the cool-down line of a raised target is also at most (1 − h)
 *   times the rate that raised it, so a blob hovering at a threshold does not
 *   flap between counts.
 */
export interface PolicyConfig {
  defaultReplicaCount: number;
  minReplicaCount: number;
  maxReplicaCount: number;
  accessRateThreshold: number;
  highAccessThreshold: number;
  coolDownThreshold: number;
  hysteresis: number;
  deReplicationGracePeriodMs: number;
}

/** The count the rate alone asks for. */
export function rawTarget(rate: number, cfg: PolicyConfig): number {
  let t = cfg.defaultReplicaCount;
  if (rate >= cfg.highAccessThreshold) t = cfg.maxReplicaCount;
  else if (rate >= cfg.accessRateThreshold) t = cfg.defaultReplicaCount + 1;
  return clamp(t, cfg);
}

function clamp(t: number, cfg: PolicyConfig): number {
  return Math.min(cfg.maxReplicaCount, Math.max(cfg.minReplicaCount, cfg.defaultReplicaCount, t));
}

/** The rate at or above which a blob is at `target`. */
function riseRate(target: number, cfg: PolicyConfig): number {
  if (target <= cfg.defaultReplicaCount) return 0;
  return target > cfg.defaultReplicaCount + 1 ? cfg.highAccessThreshold : cfg.accessRateThreshold;
}

/** Below this rate a blob at `current` counts as cool. */
export function coolLine(current: number, cfg: PolicyConfig): number {
  return Math.min(cfg.coolDownThreshold, riseRate(current, cfg) * (1 - cfg.hysteresis));
}

export interface PolicyInput {
  /** Reads per minute now. */
  rate: number;
  /** The target in force (from the directory; 0 means unset). */
  current: number;
  /** When the blob started to be cool (undefined: it is not cool). */
  coolSince: number | undefined;
  now: number;
}

export interface PolicyDecision {
  target: number;
  coolSince: number | undefined;
}

/** Decides the target now and the new cooling clock. */
export function decideTarget(input: PolicyInput, cfg: PolicyConfig): PolicyDecision {
  const current = clamp(input.current > 0 ? input.current : cfg.defaultReplicaCount, cfg);
  const wanted = rawTarget(input.rate, cfg);
  if (wanted > current) return { target: wanted, coolSince: undefined };
  if (current <= cfg.defaultReplicaCount) return { target: current, coolSince: undefined };
  // Raised: fall only after a whole grace period below the cool-down line.
  if (input.rate >= coolLine(current, cfg)) return { target: current, coolSince: undefined };
  const since = input.coolSince ?? input.now;
  if (input.now - since >= cfg.deReplicationGracePeriodMs) {
    return { target: Math.max(wanted, cfg.defaultReplicaCount), coolSince: undefined };
  }
  return { target: current, coolSince: since };
}
