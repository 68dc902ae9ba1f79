import { finish128, fmix } from '../common/key-hash.js';

/**
 * The placement digest of one needle: a 64-bit mix of (id hash, stamp,
 * deleted), XORed over a group's ids (GetPlacementDigests). XOR makes the
 * group digest independent of order, so two stores holding the same newest
 * needle per id agree without listing; any difference in the set, a stamp or
 * a deleted flag changes it (up to 2^-64 chance of a miss). Part of the wire
 * contract between stores: never change it for a running cluster.
 */

const TWO32 = 4294967296;

/**
 * Writes the needle's digest into out[0] (low half) and out[1] (high half).
 * `hashLo`/`hashHi` are the halves of hashKey64(id); `stamp` < 2^48 ms.
 */
export function needleDigest(
  hashLo: number,
  hashHi: number,
  stamp: number,
  deleted: boolean,
  out: Uint32Array,
): void {
  const sLo = (stamp % TWO32) | 0;
  const sHi = Math.floor(stamp / TWO32) | 0;
  const h1 = fmix(hashLo ^ 0x9e3779b9 ^ Math.imul(sLo, 0xcc9e2d51));
  const h2 = fmix(hashHi ^ 0x7f4a7c15 ^ Math.imul(sHi ^ (deleted ? 0x5bd1e995 : 0), 0x1b873593));
  finish128(h1, h2, out);
}
