import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Signed read URLs: `/blobs/{id}?exp=<unix seconds>&sig=<base64url HMAC-SHA256>` over the id,
 * the blob's cookie (the paper's per-needle secret, never in the URL) and the expiry. Anyone
 * holding the URL may read that blob until `exp`; it cannot be turned into another id, a later
 * expiry or a guess of the cookie. Keys: the first signs, every one verifies (rotation).
 */

/** Longest signed URL lifetime: 7 days (as S3 presigned URLs). */
export const MAX_URL_TTL_SEC = 7 * 24 * 3600;

function mac(key: Buffer, blobId: string, cookie: bigint, expSec: number): Buffer {
  return createHmac('sha256', key).update(`haystack-url-v1\n${blobId}\n${cookie}\n${expSec}`).digest();
}

/** The `sig` of (id, cookie, exp) with `key`, base64url without padding. */
export function signBlobUrl(key: Buffer, blobId: string, cookie: bigint, expSec: number): string {
  return mac(key, blobId, cookie, expSec).toString('base64url');
}

/** What a request's `exp` and `sig` query parameters say, before the blob is looked up. */
export type SignedParams =
  | { kind: 'none' }
  | { kind: 'malformed'; why: string }
  | { kind: 'expired'; expSec: number }
  | { kind: 'signed'; expSec: number; sig: Buffer };

/** Parses exp and sig (both or neither); `nowMs` decides expiry. */
export function parseSignedParams(params: URLSearchParams, nowMs: number): SignedParams {
  const exp = params.get('exp');
  const sig = params.get('sig');
  if (exp === null && sig === null) return { kind: 'none' };
  if (exp === null || sig === null) return { kind: 'malformed', why: 'a signed URL needs both exp and sig' };
  if (!/^\d{1,12}$/.test(exp)) return { kind: 'malformed', why: 'exp must be unix seconds' };
  if (!/^[A-Za-z0-9_-]{43}$/.test(sig))
    return { kind: 'malformed', why: 'sig must be 43 base64url characters' };
  const expSec = Number(exp);
  if (expSec * 1000 <= nowMs) return { kind: 'expired', expSec };
  return { kind: 'signed', expSec, sig: Buffer.from(sig, 'base64url') };
}

/** True when `sig` is the MAC of (id, cookie, exp) under one of `keys` (constant-time compare). */
export function verifyBlobUrl(
  keys: readonly Buffer[],
  blobId: string,
  cookie: bigint,
  expSec: number,
  sig: Buffer,
): boolean {
  let ok = false;
  for (const k of keys) {
    const want = mac(k, blobId, cookie, expSec);
    if (want.length === sig.length && timingSafeEqual(want, sig)) ok = true;
  }
  return ok;
}

/** The path and query of a signed URL for `blobId`. */
export function signedUrlPath(key: Buffer, blobId: string, cookie: bigint, expSec: number): string {
  return `/blobs/${encodeURIComponent(blobId)}?exp=${expSec}&sig=${signBlobUrl(key, blobId, cookie, expSec)}`;
}
