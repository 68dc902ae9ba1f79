import { createLocalJWKSet, errors, type JWTPayload, jwtVerify } from 'jose';
import { type Jwks, TOKEN_ALG, TOKEN_AUDIENCE, TOKEN_ISSUER } from './keys.js';
import { AccessDenied, type Grant, parseScopes, prefixProblem } from './scopes.js';
import { VerifiedTokens } from './token-cache.js';

/** Longest Authorization header considered (a token is a few hundred bytes). */
const MAX_TOKEN_CHARS = 8192;
/** Clock skew tolerated on exp / iat between the signer and this process. */
const CLOCK_TOLERANCE_SEC = 30;

const HOW = 'send Authorization: Bearer <token> (haystack token create; the SDK and CLI read HAYSTACK_TOKEN)';

const invalidToken = (why: string) =>
  new AccessDenied('unauthenticated', `invalid token: ${why}`, 'invalid_token');

/**
 * The bearer token of an Authorization header (RFC 6750 §2.1), '' when the header is absent.
 * @throws AccessDenied unauthenticated on another scheme or a malformed value.
 */
export function bearerToken(header: string | null | undefined): string {
  if (header === null || header === undefined || header === '') return '';
  const m = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(header);
  if (!m?.[1]) throw invalidToken(`the Authorization header must be "Bearer <token>"; ${HOW}`);
  if (m[1].length > MAX_TOKEN_CHARS) throw invalidToken(`longer than ${MAX_TOKEN_CHARS} characters`);
  return m[1];
}

/** The grant of a verified payload. @throws AccessDenied unauthenticated on bad claims. */
export function grantOfPayload(p: JWTPayload): Grant {
  const scope = (p as { scope?: unknown }).scope;
  if (typeof scope !== 'string') throw invalidToken('no scope claim');
  let scopes: Grant['scopes'];
  try {
    scopes = parseScopes(scope);
  } catch (err) {
    throw invalidToken((err as Error).message);
  }
  const prefix = (p as { blob_prefix?: unknown }).blob_prefix ?? '';
  if (typeof prefix !== 'string' || prefixProblem(prefix)) throw invalidToken('malformed blob_prefix claim');
  return { subject: typeof p.sub === 'string' ? p.sub.slice(0, 128) : '', scopes, prefix };
}

/**
 * Verifies Haystack tokens against the active public keys (a JWKS of one or two keys during
 * rotation; the token's `kid` picks one). Checks signature (ES256 only), iss, aud, exp
 * (required) and the scope and prefix claims.
 */
export class TokenVerifier {
  private keys: ReturnType<typeof createLocalJWKSet>;
  /** Tokens this key set verified (token-cache.ts): one signature check per token, not per call. */
  private verified = new VerifiedTokens();

  constructor(jwks: Jwks) {
    this.keys = createLocalJWKSet(jwks);
  }

  /** Verifies with `jwks` from now on (a rotation: a key added or removed, jwks-reload.ts). */
  use(jwks: Jwks): void {
    this.keys = createLocalJWKSet(jwks);
    // A token verified by a key that is now removed must be refused from now on.
    this.verified = new VerifiedTokens();
  }

  /**
   * The grant of an Authorization header.
   * @throws AccessDenied unauthenticated: missing, malformed, expired, unknown kid, bad signature.
   */
  async verify(authorization: string | null | undefined, nowMs = Date.now()): Promise<Grant> {
    const token = bearerToken(authorization);
    if (!token) throw new AccessDenied('unauthenticated', `missing token: ${HOW}`);
    const known = this.verified.get(token, nowMs);
    if (known) return known;
    try {
      const { payload } = await jwtVerify(token, this.keys, {
        algorithms: [TOKEN_ALG],
        issuer: TOKEN_ISSUER,
        audience: TOKEN_AUDIENCE,
        requiredClaims: ['exp'],
        clockTolerance: CLOCK_TOLERANCE_SEC,
        currentDate: new Date(nowMs),
      });
      const grant = grantOfPayload(payload);
      // exp is required (checked above); nbf optional. The same tolerance jwtVerify allowed.
      const tolMs = CLOCK_TOLERANCE_SEC * 1000;
      const nbf = typeof payload.nbf === 'number' ? payload.nbf * 1000 - tolMs : 0;
      this.verified.set(token, grant, nbf, Number(payload.exp) * 1000 + tolMs);
      return grant;
    } catch (err) {
      if (err instanceof AccessDenied) throw err;
      if (err instanceof errors.JWTExpired) {
        const exp = Number(err.payload.exp);
        throw invalidToken(
          `expired at ${new Date(exp * 1000).toISOString()}: create a new one (haystack token create)`,
        );
      }
      if (err instanceof errors.JWKSNoMatchingKey) {
        throw invalidToken('signed with a key that is not active (unknown kid): create a new one');
      }
      if (err instanceof errors.JWSSignatureVerificationFailed)
        throw invalidToken('the signature does not verify');
      if (err instanceof errors.JWTClaimValidationFailed)
        throw invalidToken(`claim ${err.claim}: ${err.message}`);
      throw invalidToken(`not a Haystack JWT (${(err as Error).message.slice(0, 100)})`);
    }
  }
}
