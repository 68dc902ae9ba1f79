import { createHash } from 'node:crypto';
import { validateBlobId } from './blob-id.js';

/**
 * Needle keys of erasure-coded shards (docs/design/ec-tier.md). Shard i of stripe
 * s is kept on a store as a needle keyed
 *
 *   `${i}~${s}`                                  when s is at most SHORT_STRIPE_ID bytes
 *   `${i}~${s.slice(0, 150)}~${hex SHA-256(s)}`   otherwise (≥ 217 bytes: no short key, ≤ 203, collides)
 *
 * in the store's shard engine (its own volumes under <dataDir>/ec), apart from
 * blob needles: placement-group listings, digests and garbage collection never
 * see a shard. Keys stay within the blob-id alphabet and 255 bytes, so the needle
 * format is unchanged. Part of the on-disk contract: never change it for a
 * running cluster.
 */

/**
 * The content type that marks a cold stub needle (internal/store/cold-stub.ts):
 * listings show it for a cold blob's stub, whose Stat answers the blob's facts.
 */
export const STUB_CONTENT_TYPE = 'application/vnd.haystack.cold-stub+proto';

/** Largest shard index + 1 (k ≤ 24 data + m ≤ 6 parity). */
export const MAX_SHARDS = 30;
/** Stripe ids up to this many bytes appear verbatim in the key. */
const SHORT_STRIPE_ID = 200;

/** Problem with a stripe id from the wire (a blob id, or "g<group>.<n>"), or null. */
export function validateStripeId(id: unknown): string | null {
  const bad = validateBlobId(id);
  return bad === null ? null : bad.replace('blob id', 'stripe id');
}

/** Problem with a shard index from the wire, or null. */
export function validateShardIndex(index: number): string | null {
  return Number.isInteger(index) && index >= 0 && index < MAX_SHARDS
    ? null
    : `shard index ${index} is outside 0..${MAX_SHARDS - 1}`;
}

/** The needle key of shard `index` of stripe `stripeId` (both already validated). */
export function shardKey(stripeId: string, index: number): string {
  if (stripeId.length <= SHORT_STRIPE_ID) return `${index}~${stripeId}`;
  const digest = createHash('sha256').update(stripeId).digest('hex');
  return `${index}~${stripeId.slice(0, 150)}~${digest}`;
}
