import { pastGrace } from './gc-rules.js';

/**
 * Orphan shard collection rules (shard-gc.ts does the I/O). Pure apart from the
 * times the caller passes; the rule set of gc-rules.ts carried over to shards:
 *
 * - A shard on store s, index i, stripe x is **committed** when s is the group's
 *   ec_members[i] and a member of x's group holds a stub naming stripe x (the
 *   cooling commit point, docs/design/ec-tier.md). Readers use only those.
 * - It is an **orphan** when nothing can read it: listed but no member's stub
 *   names the stripe (an encode that never committed, a blob warmed back or
 *   deleted), or not listed at all (a drain's or repair's old copy) while the
 *   listed store for that index is ACTIVE, or no stub names the stripe. Unknown
 *   (a member did not answer) is never an orphan.
 * - An orphan is collected only once it was written at least GC_GRACE_PERIOD ago
 *   (an encode in flight is never taken) **and** has been seen orphaned for
 *   GC_GRACE_PERIOD (a gateway still following an older ec_members, a stub write
 *   whose answer was lost). Seeing it referenced again resets the clock.
 */
export interface ShardFacts {
  /** When the shard needle was appended (epoch ms). */
  writtenAtMs: number;
  /** The store is ec_members[index] of the stripe's group. */
  listed: boolean;
  /** The group's ec_members[index] (whichever store) is ACTIVE and not draining: not being rebuilt or moved. */
  listedActive: boolean;
  /** A member's stub names the stripe: true, false, or undefined when a member could not tell. */
  referenced: boolean | undefined;
}

/** True when nothing reads the shard (see above); false when unsure. */
export function isOrphanShard(f: ShardFacts): boolean {
  if (f.referenced === undefined) return false;
  if (f.listed) return !f.referenced;
  return f.listedActive || !f.referenced;
}

export type ShardGcDecision =
  | { action: 'keep' }
  | { action: 'wait'; orphanSinceMs: number }
  | { action: 'collect' };

/**
 * What to do with one shard at `now`, given when it was first seen orphaned
 * (undefined: not before). `keep` forgets the clock; `wait` carries it on.
 */
export function decideShardGc(
  f: ShardFacts,
  orphanSinceMs: number | undefined,
  now: number,
  graceMs: number,
): ShardGcDecision {
  if (!isOrphanShard(f)) return { action: 'keep' };
  const since = orphanSinceMs ?? now;
  if (pastGrace(f.writtenAtMs, now, graceMs) && pastGrace(since, now, graceMs) && orphanSinceMs !== undefined)
    return { action: 'collect' };
  return { action: 'wait', orphanSinceMs: since };
}

/** (store, stripe, index) as one map key. */
export const shardPairKey = (storeId: string, stripeId: string, index: number) =>
  `${storeId}\u0000${index}\u0000${stripeId}`;
