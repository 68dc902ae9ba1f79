import { validateBlobId } from '../common/blob-id.js';

/**
 * What a token may do. `admin` implies every other scope and also sees cookies and the
 * operator routes (directory and replication reads, reflection) through Envoy.
 */
export const SCOPES = ['blob:read', 'blob:write', 'blob:delete', 'blob:list', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

/** The verified facts of a token (or of an operator certificate, which counts as admin). */
export interface Grant {
  /** Token `sub` (for logs and rate-limit keys); '' when unnamed. */
  subject: string;
  scopes: ReadonlySet<Scope>;
  /** Blob ids the grant is limited to start with this ('' = every id). */
  prefix: string;
}

/** The grant of an mTLS operator (role admin) calling without a token. */
export const OPERATOR_GRANT: Grant = { subject: 'operator', scopes: new Set<Scope>(['admin']), prefix: '' };

/** A refusal decided from a grant: the gRPC code it maps to and an actionable message. */
export class AccessDenied extends Error {
  constructor(
    readonly kind: 'unauthenticated' | 'permission_denied',
    message: string,
    /** RFC 6750 §3.1 error code for WWW-Authenticate (`invalid_token`, `insufficient_scope`), '' when none. */
    readonly bearerError: '' | 'invalid_token' | 'insufficient_scope' = '',
    /** The scope that was missing, for `WWW-Authenticate: Bearer scope="…"`. */
    readonly scope = '',
  ) {
    super(message);
  }
}

/**
 * Parses a token's `scope` claim (RFC 8693 §4.2: space-separated) or a CLI `--scope` list
 * (commas also accepted). Duplicates collapse.
 * @throws Error naming the unknown scope.
 */
export function parseScopes(text: string): Set<Scope> {
  const out = new Set<Scope>();
  for (const s of text.split(/[\s,]+/)) {
    if (s === '') continue;
    if (!(SCOPES as readonly string[]).includes(s)) {
      throw new Error(`unknown scope "${s.slice(0, 40)}": expected ${SCOPES.join(', ')}`);
    }
    out.add(s as Scope);
  }
  return out;
}

/**
 * Why `prefix` cannot limit a token, or null. A prefix is a blob id prefix: up to 255
 * characters of [A-Za-z0-9._~-]; '' means unlimited.
 */
export function prefixProblem(prefix: string): string | null {
  if (prefix === '') return null;
  const p = validateBlobId(prefix);
  return p ? p.replace('blob id', 'prefix') : null;
}

export function hasScope(g: Grant, scope: Scope): boolean {
  return g.scopes.has(scope) || g.scopes.has('admin');
}

/**
 * Checks that `g` may do `scope` on `blobId` (omit for calls on no single blob).
 * @throws AccessDenied permission_denied: the scope is missing, or the id is outside the prefix.
 */
export function requireScope(g: Grant, scope: Scope, blobId?: string): void {
  if (!hasScope(g, scope)) {
    const have = [...g.scopes].join(' ') || 'none';
    throw new AccessDenied(
      'permission_denied',
      `the token lacks scope ${scope} (it has: ${have}); create one with haystack token create --scope ${scope}`,
      'insufficient_scope',
      scope,
    );
  }
  if (blobId !== undefined && !blobId.startsWith(g.prefix)) {
    throw new AccessDenied(
      'permission_denied',
      blobId === ''
        ? `the token is limited to ids starting with "${g.prefix}": name the blob id`
        : `blob id "${blobId.slice(0, 80)}" is outside the token's prefix "${g.prefix}"`,
      'insufficient_scope',
      scope,
    );
  }
}

/**
 * The List prefix a grant may use: a request without one gets the grant's prefix; one that
 * leaves the grant's prefix is refused.
 * @throws AccessDenied permission_denied.
 */
export function listPrefix(g: Grant, requested: string): string {
  requireScope(g, 'blob:list');
  if (requested === '') return g.prefix;
  if (!requested.startsWith(g.prefix)) {
    throw new AccessDenied(
      'permission_denied',
      `list prefix "${requested.slice(0, 80)}" is outside the token's prefix "${g.prefix}"`,
      'insufficient_scope',
      'blob:list',
    );
  }
  return requested;
}

/** Cookies (the paper's capability) are shown only to admin grants. */
export function seesCookies(g: Grant): boolean {
  return g.scopes.has('admin');
}
