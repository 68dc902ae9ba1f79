import { parseCookieSegment } from '../auth/capability-url.js';
import { AccessDenied, type Grant, requireScope } from '../auth/scopes.js';
import { parseSignedParams } from '../auth/signed-url.js';
import type { HttpRequest } from '../server/server.js';
import { bearerChallenge, type GatewayAccess, toHttpError } from './access.js';
import type { CookieProof } from './blobs.js';
import { HttpError } from './http-errors.js';
import type { UrlSigner } from './url-signer.js';

/** How GET /blobs/{id} decides who may read (issue 13). */
export interface ReadAccess {
  access: GatewayAccess;
  urls: UrlSigner;
  /** PUBLIC_READS: a GET without token or signature is served. */
  publicReads: boolean;
  /** True when the request came over mTLS from an operator certificate. */
  operator(req: HttpRequest): boolean;
}

/**
 * What a GET may read: anything its grant allows (checked here, proof none), only what its
 * signature covers (proof check: the MAC over the cookie), or only the blob whose cookie its
 * capability URL names (proof cookie: the stores check it). `refused` is the one answer for a
 * failed proof and an unknown id alike.
 */
export interface ReadPermit {
  proof: CookieProof;
  refused?: HttpError;
}

/** The same answer for a wrong signature and an unknown id: no existence oracle. */
export const SIGNATURE_REFUSED = new HttpError(
  403,
  'the URL signature does not match this blob (or there is no such blob): ask for a new signed URL (haystack url ID)',
);

/** The same answer for a wrong cookie, a deleted and an unknown id: no existence oracle. */
export const CAPABILITY_REFUSED = new HttpError(
  404,
  'no blob with this id and cookie: ask its owner for a new URL (haystack url ID)',
);

/**
 * The permit of a capability URL `/blobs/{id}/{cookie}` (auth/capability-url.ts): no token
 * needed, the cookie is the capability. @throws HttpError 400 for a malformed cookie segment.
 */
export function capabilityPermit(segment: string): ReadPermit {
  const cookie = parseCookieSegment(segment);
  if (cookie === undefined) {
    throw new HttpError(400, 'the cookie in /blobs/{id}/{cookie} must be 16 lower-case hex digits');
  }
  return { proof: { kind: 'cookie', cookie }, refused: CAPABILITY_REFUSED };
}

/**
 * The permit of GET/HEAD /blobs/{id}: a bearer token with blob:read on the id; else a signed URL
 * (exp and sig), checked against the blob's cookie once known; else public reads when enabled.
 * @throws HttpError 401 (no credentials, invalid token, expired URL), 403 (scope, prefix), 400.
 */
export async function readPermit(
  req: HttpRequest,
  blobId: string,
  query: string,
  a: ReadAccess,
): Promise<ReadPermit> {
  const grant: Grant | undefined = await a.access.ofHttp(req, a.operator(req));
  if (grant) {
    try {
      requireScope(grant, 'blob:read', blobId);
    } catch (err) {
      throw toHttpError(err);
    }
    return { proof: { kind: 'none' } };
  }
  const signed = parseSignedParams(new URLSearchParams(query), Date.now());
  switch (signed.kind) {
    case 'malformed':
      throw new HttpError(400, `malformed signed URL: ${signed.why}`);
    case 'expired': {
      const err = new AccessDenied(
        'unauthenticated',
        `the signed URL expired at ${new Date(signed.expSec * 1000).toISOString()}: ask for a new one (haystack url ID)`,
        'invalid_token',
      );
      throw toHttpError(err);
    }
    case 'signed':
      return {
        proof: { kind: 'check', ok: (cookie) => a.urls.verify(blobId, cookie, signed.expSec, signed.sig) },
        refused: SIGNATURE_REFUSED,
      };
    default:
      if (a.publicReads) return { proof: { kind: 'none' } };
      throw new HttpError(
        401,
        'reading a blob needs a token (Authorization: Bearer …, see haystack token create) or a signed URL (haystack url ID)',
        { 'www-authenticate': bearerChallenge() },
      );
  }
}
