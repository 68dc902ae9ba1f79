/**
 * When a blob changes tier (docs/design/ec-tier.md, "Moving between tiers"): pure.
 *
 * - A replicated blob whose read rate stays below `coldRatePerMin` for all of
 *   `coldAfterMs` is encoded — never one with a raised replica target (it is hot
 *   by definition) and never before `coldAfterMs` has passed since it was written
 *   (a new blob has no heat yet, not no reads).
 * - A cold blob whose rate reaches `warmRatePerMin` gets its full replicas back
 *   at once (a read burst should not wait).
 * - warmRatePerMin > coldRatePerMin (config checks it): between the two lines
 *   nothing moves, so a blob hovering near one line cannot flap.
 *
 * The cooling clock (`coolSinceMs`) is the caller's, in memory: a manager that
 * takes over restarts it, which only delays encoding (errs on the safe side).
 */
export type Tier = 'replicated' | 'erasure-coded';

export interface TierInputs {
  tier: Tier;
  /** EWMA reads per minute (HeatTracker). */
  ratePerMin: number;
  /** The blob's replica target is raised above the default (a hot blob). */
  raised: boolean;
  /** When the blob was written (its stamp), ms since the epoch. */
  writtenAtMs: number;
  /** Since when its rate has been below the cold line (undefined: not below now). */
  coolSinceMs: number | undefined;
  nowMs: number;
}

export interface TierThresholds {
  coldRatePerMin: number;
  coldAfterMs: number;
  warmRatePerMin: number;
}

export interface TierDecision {
  /** 'encode': cool it; 'rematerialise': warm it; 'stay': nothing to do. */
  action: 'encode' | 'rematerialise' | 'stay';
  /** The cooling clock to keep for next time. */
  coolSinceMs: number | undefined;
}

export function decideTier(b: TierInputs, t: TierThresholds): TierDecision {
  if (b.tier === 'erasure-coded') {
    return { action: b.ratePerMin >= t.warmRatePerMin ? 'rematerialise' : 'stay', coolSinceMs: undefined };
  }
  if (b.raised || b.ratePerMin >= t.coldRatePerMin) return { action: 'stay', coolSinceMs: undefined };
  const since = b.coolSinceMs ?? b.nowMs;
  const cold = b.nowMs - since >= t.coldAfterMs && b.nowMs - b.writtenAtMs >= t.coldAfterMs;
  return { action: cold ? 'encode' : 'stay', coolSinceMs: since };
}
