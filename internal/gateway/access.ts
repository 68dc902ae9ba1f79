import { Code, ConnectError, type HandlerContext } from '@connectrpc/connect';
import { AccessDenied, type Grant, OPERATOR_GRANT } from '../auth/scopes.js';
import type { TokenVerifier } from '../auth/token-verify.js';
import { callerKey } from '../security/identity.js';
import type { HttpRequest } from '../server/server.js';
import { HttpError } from './http-errors.js';

/** RFC 6750 §3 realm of every challenge. */
const REALM = 'haystack';

/**
 * Who a public call is for (issue 13): the grant of its bearer token, verified against the
 * active keys (defence in depth: Envoy's jwt_authn checked it too, and direct callers meet
 * the same check). An operator's mTLS certificate (role admin) without a token counts as
 * admin; a token, when sent, always decides (it can only narrow).
 */
export class GatewayAccess {
  constructor(
    /** Undefined: no AUTH_JWKS_FILE, so only operator certificates get in. */
    private readonly verifier: TokenVerifier | undefined,
  ) {}

  /** The grant of a gRPC / Connect call. @throws ConnectError UNAUTHENTICATED. */
  async ofCall(ctx: HandlerContext): Promise<Grant> {
    return this.grant(ctx.requestHeader.get('authorization'), isOperator(ctx)).catch((err) => {
      throw toConnectError(err);
    });
  }

  /**
   * The grant of a plain HTTP request, or undefined when it carries no token (the route then
   * decides: a signed URL, public reads). @throws HttpError 401 for an invalid token.
   */
  async ofHttp(req: HttpRequest, operator: boolean): Promise<Grant | undefined> {
    const header = req.headers.authorization;
    if (!header && !operator) return undefined;
    return this.grant(header, operator).catch((err) => {
      throw toHttpError(err);
    });
  }

  private async grant(header: string | null | undefined, operator: boolean): Promise<Grant> {
    if (!header && operator) return OPERATOR_GRANT;
    if (!this.verifier) {
      throw new AccessDenied(
        'unauthenticated',
        'this gateway verifies no tokens (AUTH_JWKS_FILE is not set): only operator certificates are accepted',
        'invalid_token',
      );
    }
    return this.verifier.verify(header);
  }
}

function isOperator(ctx: HandlerContext): boolean {
  const c = ctx.values.get(callerKey);
  return c?.transport === 'mtls' && c.identity?.role === 'admin';
}

/** The one mapping of an access refusal to gRPC; anything else passes unchanged. */
export function toConnectError(err: unknown): unknown {
  if (!(err instanceof AccessDenied)) return err;
  return new ConnectError(
    err.message,
    err.kind === 'unauthenticated' ? Code.Unauthenticated : Code.PermissionDenied,
  );
}

/**
 * The one mapping of an access refusal to HTTP (RFC 6750 §3): 401 with a Bearer challenge for
 * a missing or invalid token, 403 with error="insufficient_scope" for a missing scope or prefix.
 */
export function toHttpError(err: unknown): unknown {
  if (!(err instanceof AccessDenied)) return err;
  return new HttpError(err.kind === 'unauthenticated' ? 401 : 403, err.message, {
    'www-authenticate': bearerChallenge(err),
  });
}

/** `WWW-Authenticate: Bearer realm=…[, error=…, error_description=…, scope=…]`. */
export function bearerChallenge(err?: AccessDenied): string {
  const parts = [`realm="${REALM}"`];
  if (err?.bearerError) {
    parts.push(`error="${err.bearerError}"`);
    // RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E (no " or \).
    parts.push(`error_description="${err.message.replace(/[^\x20-\x7e]|["\\]/g, "'").slice(0, 300)}"`);
  }
  if (err?.scope) parts.push(`scope="${err.scope}"`);
  return `Bearer ${parts.join(', ')}`;
}
