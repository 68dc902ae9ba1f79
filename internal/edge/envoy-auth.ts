/**
 * Bearer tokens at the edge: Envoy's jwt_authn filter (JWKS from a file or the gateways),
 * the token rule of each route, RBAC for admin routes, and the hints in local replies
 * (docs/security.md "Public access").
 */
import type { Json } from './envoy-json.js';

/**
 * Bearer tokens checked at the edge (jwt_authn, docs/security.md "Public access"): the JWKS
 * from `jwksFile`, else fetched from the gateways' /.well-known/jwks.json. `jwksCacheSec`: how
 * long a fetched JWKS is kept before Envoy fetches it again (default 300 s): a key added to or
 * removed from the gateways' AUTH_JWKS_FILE reaches the edge within that time, without a restart.
 */
export interface EdgeAuth {
  jwksFile?: string;
  jwksCacheSec?: number;
}

export const JWT_FILTER = 'envoy.filters.http.jwt_authn';
const JWT_PER_ROUTE = 'type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig';
const RBAC_PER_ROUTE = 'type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute';

/** How a route treats bearer tokens at the edge: required, checked when present, or ignored. */
export type TokenRule = 'required' | 'optional' | 'none' | 'admin';

/** The per-route jwt_authn (and, for admin routes, RBAC) config of a token rule. */
export function tokenFilters(rule: TokenRule): Record<string, Json> {
  const jwt: Json =
    rule === 'none'
      ? { '@type': JWT_PER_ROUTE, disabled: true }
      : { '@type': JWT_PER_ROUTE, requirement_name: rule === 'optional' ? 'optional' : 'required' };
  if (rule !== 'admin') return { [JWT_FILTER]: jwt };
  // The verified payload is in the dynamic metadata (payload_in_metadata); scope is space-separated.
  const adminScope: Json = {
    metadata: {
      filter: JWT_FILTER,
      path: [{ key: 'jwt_payload' }, { key: 'scope' }],
      value: { string_match: { safe_regex: { regex: '(^|.* )admin( .*|$)' } } },
    },
  };
  return {
    [JWT_FILTER]: jwt,
    'envoy.filters.http.rbac': {
      '@type': RBAC_PER_ROUTE,
      rbac: {
        rules: {
          action: 'ALLOW',
          policies: { admin: { permissions: [{ any: true }], principals: [adminScope] } },
        },
      },
    },
  };
}

export const TOKEN_HINT =
  'send authorization: Bearer <token> (haystack token create; the SDK and CLI read HAYSTACK_TOKEN)';
export const ADMIN_HINT = 'directory and replication reads and reflection need a token with scope admin';

/** Appends a hint to Envoy's local replies of one status (upstream answers are left as they are). */
export function localReply(status: number, hint: string): Json {
  return {
    filter: {
      status_code_filter: {
        comparison: { op: 'EQ', value: { default_value: status, runtime_key: `local_reply_${status}` } },
      },
    },
    body_format_override: { text_format_source: { inline_string: `%LOCAL_REPLY_BODY%: ${hint}\n` } },
  };
}

/** Adds the token rule to a route (kept beside its rate-limit config). */
export function guarded(r: Json, rule: TokenRule): Json {
  const o = r as Record<string, Json>;
  return {
    ...o,
    typed_per_filter_config: { ...((o.typed_per_filter_config as object) ?? {}), ...tokenFilters(rule) },
  };
}

/**
 * jwt_authn: one provider (iss/aud haystack, ES256 keys of the JWKS), the token forwarded to
 * the gateway (which checks scopes and prefixes, and verifies again), its payload kept for RBAC.
 */
export function jwtFilter(auth: EdgeAuth): Json {
  const jwks: Json = auth.jwksFile
    ? { local_jwks: { filename: auth.jwksFile } }
    : {
        remote_jwks: {
          http_uri: { uri: 'https://gateways/.well-known/jwks.json', cluster: 'gateways', timeout: '5s' },
          cache_duration: `${auth.jwksCacheSec ?? 300}s`,
          // Fetched at start (the listener waits), retried while the gateways are not up yet.
          async_fetch: { fast_listener: false },
          retry_policy: { num_retries: 10, retry_back_off: { base_interval: '0.5s', max_interval: '5s' } },
        },
      };
  return {
    name: JWT_FILTER,
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication',
      providers: {
        haystack: {
          issuer: 'haystack',
          audiences: ['haystack'],
          ...jwks,
          forward: true,
          payload_in_metadata: 'jwt_payload',
          clock_skew_seconds: 30,
          // Verified tokens by their string (exp still checked on each hit): one ES256 verify
          // per token, not per request (issue 11; docs/benchmarks.md "Where the time goes").
          jwt_cache_config: { jwt_cache_size: 10000 },
        },
      },
      requirement_map: {
        required: { provider_name: 'haystack' },
        optional: { requires_any: { requirements: [{ provider_name: 'haystack' }, { allow_missing: {} }] } },
      },
      // Deny by default: a route without its own rule needs a token.
      rules: [{ match: { prefix: '/' }, requires: { provider_name: 'haystack' } }],
    },
  };
}
