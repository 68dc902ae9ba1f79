/**
 * Envoy's local rate limits per client (token subject, or address for anonymous reads):
 * one token bucket per client and route, so one noisy client never spends another's.
 */
import { JWT_FILTER } from './envoy-auth.js';
import { dur, type Json, RATE } from './envoy-json.js';

/** A token bucket of each client (rate-limit-spec.ts parses `100/1s:200`). */
export interface RateLimit {
  /** Bucket size: the burst allowed. */
  maxTokens: number;
  /** Tokens added per fill interval. */
  tokensPerFill: number;
  fillIntervalMs: number;
}

export const DEFAULT_UPLOAD_RATE_LIMIT: RateLimit = {
  maxTokens: 200,
  tokensPerFill: 100,
  fillIntervalMs: 1000,
};
export const DEFAULT_DELETE_RATE_LIMIT: RateLimit = {
  maxTokens: 100,
  tokensPerFill: 50,
  fillIntervalMs: 1000,
};
export const DEFAULT_READ_RATE_LIMIT: RateLimit = {
  maxTokens: 2000,
  tokensPerFill: 1000,
  fillIntervalMs: 1000,
};
export const DEFAULT_RATE_LIMIT_CLIENTS = 10_000;

const bucket = (r: RateLimit): Json => ({
  max_tokens: r.maxTokens,
  tokens_per_fill: r.tokensPerFill,
  fill_interval: dur(r.fillIntervalMs),
});

/**
 * Who a request is, for the rate limiter (`rate_limits` actions → descriptors): with tokens at
 * the edge, the verified `sub` from jwt_authn's payload metadata (a client cannot forge it), or
 * for a request without an Authorization header (jwt_authn refused any invalid one) the client
 * address Envoy trusts (use_remote_address, no X-Forwarded-For hops trusted). Without edge
 * tokens, the address alone.
 */
function clientDescriptors(auth: boolean): Json[] {
  const address: Json = { remote_address: {} };
  if (!auth) return [{ actions: [address] }];
  const subject: Json = {
    metadata: {
      descriptor_key: 'subject',
      metadata_key: { key: JWT_FILTER, path: [{ key: 'jwt_payload' }, { key: 'sub' }] },
      source: 'DYNAMIC',
    },
  };
  const anonymous: Json = {
    header_value_match: {
      descriptor_key: 'anonymous',
      descriptor_value: 'address',
      expect_match: false,
      headers: [{ name: 'authorization', present_match: true }],
    },
  };
  return [{ actions: [subject] }, { actions: [anonymous, address] }];
}

/**
 * A per-client token bucket on a route (local_ratelimit with wildcard descriptors, Envoy ≥ 1.34):
 * one bucket per subject or address, kept in an LRU of `clients`. The route's default bucket
 * serves only requests no descriptor names (a token without `sub`), so it is never shared by
 * named clients (always_consume_default_token_bucket: false).
 */
export function rateLimit(prefix: string, r: RateLimit, auth: boolean, clients: number): Json {
  const all = { default_value: { numerator: 100, denominator: 'HUNDRED' }, runtime_key: `${prefix}_enabled` };
  const descriptors: Json[] = auth
    ? [
        { entries: [{ key: 'subject', value: '' }], token_bucket: bucket(r) },
        {
          entries: [
            { key: 'anonymous', value: 'address' },
            { key: 'remote_address', value: '' },
          ],
          token_bucket: bucket(r),
        },
      ]
    : [{ entries: [{ key: 'remote_address', value: '' }], token_bucket: bucket(r) }];
  return {
    'envoy.filters.http.local_ratelimit': {
      '@type': RATE,
      stat_prefix: prefix,
      token_bucket: bucket(r),
      descriptors,
      // Embedded (not the route's rate_limits, which Envoy is phasing out for local limits).
      rate_limits: clientDescriptors(auth),
      always_consume_default_token_bucket: false,
      max_dynamic_descriptors: clients,
      filter_enabled: all,
      filter_enforced: { ...all, runtime_key: `${prefix}_enforced` },
      // gRPC callers see RESOURCE_EXHAUSTED (not UNAVAILABLE, which clients retry); HTTP callers 429.
      rate_limited_as_resource_exhausted: true,
      response_headers_to_add: [
        {
          append_action: 'OVERWRITE_IF_EXISTS_OR_ADD',
          header: { key: 'x-haystack-rate-limited', value: prefix },
        },
      ],
    },
  };
}
