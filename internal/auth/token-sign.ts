import { importJWK, SignJWT } from 'jose';
import { type SigningKey, TOKEN_ALG, TOKEN_AUDIENCE, TOKEN_ISSUER } from './keys.js';
import { prefixProblem, type Scope } from './scopes.js';

/** Longest token lifetime `createToken` issues: a year; short-lived tokens are the norm. */
export const MAX_TOKEN_TTL_SEC = 366 * 24 * 3600;

export interface TokenRequest {
  scopes: ReadonlySet<Scope>;
  /** Limit to ids starting with this ('' = every id). */
  prefix: string;
  /** Lifetime in seconds, 1..MAX_TOKEN_TTL_SEC. */
  ttlSec: number;
  /** `sub`: who the token is for (logs, per-client rate limits). */
  subject: string;
  /** Issue time, ms since the epoch (tests). */
  nowMs?: number;
}

/**
 * A signed JWT (RFC 7519, ES256, header `kid`) with claims iss=aud="haystack", sub, iat, exp,
 * `scope` (space-separated, RFC 8693 §4.2) and `blob_prefix` when limited.
 * @throws Error on an empty scope set, a bad prefix or ttl.
 */
export async function createToken(key: SigningKey, req: TokenRequest): Promise<string> {
  if (req.scopes.size === 0) throw new Error('a token needs at least one scope');
  const p = prefixProblem(req.prefix);
  if (p) throw new Error(p);
  if (!Number.isInteger(req.ttlSec) || req.ttlSec < 1 || req.ttlSec > MAX_TOKEN_TTL_SEC) {
    throw new Error(`ttl must be 1 s to ${MAX_TOKEN_TTL_SEC} s`);
  }
  const now = Math.floor((req.nowMs ?? Date.now()) / 1000);
  const jwt = new SignJWT({
    scope: [...req.scopes].join(' '),
    ...(req.prefix ? { blob_prefix: req.prefix } : {}),
  })
    .setProtectedHeader({ alg: TOKEN_ALG, kid: key.kid, typ: 'JWT' })
    .setIssuer(TOKEN_ISSUER)
    .setAudience(TOKEN_AUDIENCE)
    .setSubject(req.subject)
    .setIssuedAt(now)
    .setExpirationTime(now + req.ttlSec);
  return jwt.sign(await importJWK(key.privateJwk, TOKEN_ALG));
}
