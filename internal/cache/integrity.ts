import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Integrity of cache entries: Redis is shared and reachable by more than the
 * gateways, so an entry is only served when its HMAC-SHA256 (RFC 2104), under
 * a key Redis never sees (CACHE_INTEGRITY_KEY), matches. The MAC covers the
 * Redis key too, so a genuine entry of one blob cannot be planted under another.
 */

export const MAC_BYTES = 32;

function mac(key: Buffer, redisKey: string, body: Buffer): Buffer {
  return createHmac('sha256', key).update(redisKey).update('\0').update(body).digest();
}

/** body || HMAC(key, redisKey || 0 || body). */
export function seal(key: Buffer, redisKey: string, body: Buffer): Buffer {
  return Buffer.concat([body, mac(key, redisKey, body)]);
}

/**
 * Seals in place: `buf` holds the body in its first `bodyLength` bytes and
 * MAC_BYTES of room after them, where the MAC is written (the same bytes as
 * `seal(key, redisKey, body)`, without copying the body again).
 */
export function sealInPlace(key: Buffer, redisKey: string, buf: Buffer, bodyLength: number): Buffer {
  if (buf.length !== bodyLength + MAC_BYTES) throw new Error('sealInPlace: no room for the MAC');
  mac(key, redisKey, buf.subarray(0, bodyLength)).copy(buf, bodyLength);
  return buf;
}

/** The body when the MAC is genuine; 'forged' when it is not (a mismatch is never served). */
export function unseal(key: Buffer, redisKey: string, value: Buffer): Buffer | 'forged' {
  if (value.length < MAC_BYTES) return 'forged';
  const body = value.subarray(0, value.length - MAC_BYTES);
  const got = value.subarray(value.length - MAC_BYTES);
  return timingSafeEqual(got, mac(key, redisKey, body)) ? body : 'forged';
}
