/**
 * The paper's capability URL (Haystack §3.4, "the cookie … prevents attacks aimed at guessing
 * valid URLs"): `/blobs/{id}/{cookie}`, the needle's 64-bit cookie as 16 lower-case hex digits.
 * Whoever holds it reads the blob without a token for as long as the blob exists (it does not
 * expire: a signed URL does). Cookies are shown only to admin callers, who hand such URLs out.
 */

const COOKIE_HEX = /^[0-9a-f]{16}$/;

/** The 16-hex-digit path segment of a cookie. */
export function cookieSegment(cookie: bigint): string {
  return BigInt.asUintN(64, cookie).toString(16).padStart(16, '0');
}

/** `/blobs/{id}/{cookie}` (the id percent-encoded). */
export function capabilityPath(blobId: string, cookie: bigint): string {
  return `/blobs/${encodeURIComponent(blobId)}/${cookieSegment(cookie)}`;
}

/**
 * The cookie of a capability URL's last segment.
 * @returns undefined unless it is 16 lower-case hex digits and not 0 (0 is never a cookie: it
 * means "no check" to a store).
 */
export function parseCookieSegment(segment: string): bigint | undefined {
  if (!COOKIE_HEX.test(segment)) return undefined;
  const cookie = BigInt(`0x${segment}`);
  return cookie === 0n ? undefined : cookie;
}
