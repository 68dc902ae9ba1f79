/**
 * Envoy (v3 API) in front of Haystack: one public listener carrying gRPC,
 * gRPC-Web, Connect and plain HTTP (/blobs/{id}, /ui/); load balancing with
 * active gRPC health checks and outlier detection across gateways, directories
 * and replication managers; retries of idempotent calls; CORS; per-client local rate
 * limits (token subject, or address for anonymous reads) on uploads, deletes and reads;
 * request size limits; a JSON access log.
 *
 * `renderEnvoyConfig` builds the config for `haystack dev` and the tests (static
 * loopback addresses) and for deploy/ (DNS names); `toYaml` writes it out.
 */

export interface Upstream {
  host: string;
  port: number;
}

/** A token bucket of each client (rate-limit-spec.ts parses `100/1s:200`). */
export interface RateLimit {
  /** Bucket size: the burst allowed. */
  maxTokens: number;
  /** Tokens added per fill interval. */
  tokensPerFill: number;
  fillIntervalMs: number;
}

export interface EnvoyOptions {
  /** Public listener. */
  listen: Upstream;
  /** Admin interface (keep it on loopback). */
  admin: Upstream;
  /**
   * A listener serving only GET /stats/prometheus (proxied to the admin
   * interface), for Prometheus in Kubernetes; the rest of the admin stays on loopback.
   */
  stats?: Upstream;
  /**
   * Export a span per request (OpenTelemetry, OTLP/HTTP to this collector) and
   * pass W3C `traceparent` on to the gateways: Envoy is the root of each trace.
   */
  tracing?: { collector: Upstream; sampledPercent?: number };
  gateways: Upstream[];
  directories: Upstream[];
  replication: Upstream[];
  /** Upstreams are DNS names resolved continuously (deploy) instead of IP addresses. */
  dns?: boolean;
  /**
   * Origins allowed by CORS, exactly (scheme://host[:port]); none: same-origin only (the
   * dashboard is served from Envoy itself). "*" is refused: any site could then drive a
   * developer's cluster from a page (issue 13).
   */
  corsOrigins: string[];
  /**
   * Bearer tokens checked at the edge (jwt_authn, docs/security.md "Public access"): the JWKS
   * from `jwksFile`, else fetched from the gateways' /.well-known/jwks.json. Directory and
   * replication reads and reflection are then routed for admin tokens only; unset: they are
   * not routed at all and the gateways alone check tokens. `jwksCacheSec`: how long a fetched
   * JWKS is kept before Envoy fetches it again (default 300 s): a key added to or removed
   * from the gateways' AUTH_JWKS_FILE reaches the edge within that time, without a restart.
   */
  auth?: { jwksFile?: string; jwksCacheSec?: number };
  /**
   * Per client: every token subject (JWT `sub`, verified by jwt_authn) has its own bucket, and
   * every client address for anonymous requests (signed URLs, PUBLIC_READS); one noisy client
   * never spends another's. Upload and Put requests (gRPC, Connect, PUT/POST /blobs).
   */
  uploadRateLimit: RateLimit;
  /** Delete requests, per client. */
  deleteRateLimit: RateLimit;
  /** Reads (Download, Stat, List, CreateSignedUrl, GetStats, GET /blobs/{id}), per client. */
  readRateLimit?: RateLimit;
  /**
   * Clients tracked per route (Envoy's LRU of dynamic descriptors, default 10000): a client
   * evicted by newer ones starts again with a full bucket.
   */
  rateLimitClients?: number;
  /** Uploads whose declared Content-Length is larger are refused (413) at the edge. */
  maxUploadBytes: number;
  /** Access log file (default: Envoy's stdout). */
  accessLogPath?: string;
  /** Active health check period (default 2 s). */
  healthCheckIntervalMs?: number;
  /**
   * mTLS to the upstreams with Envoy's own certificate (role envoy), trusting
   * only the cluster CA; unset: plaintext h2c (INSECURE_PLAINTEXT clusters).
   */
  upstreamTls?: UpstreamTls;
}

/** Envoy's certificate, key and the cluster CA, as files (PEM). */
export interface UpstreamTls {
  certFile: string;
  keyFile: string;
  caFile: string;
}

/**
 * Upstream TLS (envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext):
 * Envoy presents its certificate; the upstream must chain to our CA and carry
 * the SPIFFE ID of the expected role (spiffe://haystack/<role>/...).
 */
function upstreamTlsSocket(tls: UpstreamTls, role: string): Json {
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
      common_tls_context: {
        alpn_protocols: ['h2'],
        tls_certificates: [
          { certificate_chain: { filename: tls.certFile }, private_key: { filename: tls.keyFile } },
        ],
        validation_context: {
          trusted_ca: { filename: tls.caFile },
          match_typed_subject_alt_names: [
            { san_type: 'URI', matcher: { prefix: `spiffe://haystack/${role}/` } },
          ],
        },
      },
    },
  };
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

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const dur = (ms: number) => `${(ms / 1000).toFixed(3).replace(/\.?0+$/, '') || '0'}s`;
const HCM =
  'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager';
const RATE = 'type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit';
const CORS = 'type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy';
const HTTP_OPTS = 'envoy.extensions.upstreams.http.v3.HttpProtocolOptions';

/** One JSON object per request. */
const ACCESS_LOG_FORMAT: Json = {
  time: '%START_TIME%',
  method: '%REQ(:METHOD)%',
  path: '%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%',
  protocol: '%PROTOCOL%',
  content_type: '%REQ(CONTENT-TYPE)%',
  status: '%RESPONSE_CODE%',
  grpc_status: '%GRPC_STATUS(NUMBER)%',
  flags: '%RESPONSE_FLAGS%',
  bytes_in: '%BYTES_RECEIVED%',
  bytes_out: '%BYTES_SENT%',
  duration_ms: '%DURATION%',
  upstream: '%UPSTREAM_HOST%',
  attempts: '%UPSTREAM_REQUEST_ATTEMPT_COUNT%',
  client: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%',
  user_agent: '%REQ(USER-AGENT)%',
  request_id: '%REQ(X-REQUEST-ID)%',
};

/** Methods that may run twice: Envoy retries them on UNAVAILABLE, resets and failed connects. */
const IDEMPOTENT_RETRY: Json = {
  retry_on: 'unavailable,reset,connect-failure,refused-stream,retriable-status-codes',
  // Connect (HTTP/1.1) answers UNAVAILABLE as 503.
  retriable_status_codes: [503],
  num_retries: 3,
  per_try_timeout: '0s',
  retry_host_predicate: [
    {
      name: 'envoy.retry_host_predicates.previous_hosts',
      typed_config: {
        '@type': 'type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate',
      },
    },
  ],
  host_selection_retry_max_attempts: 5,
  retry_back_off: { base_interval: '0.025s', max_interval: '0.25s' },
};

/** Calls that are not repeated by Envoy (non-idempotent or client streams): only a refused connection. */
const CONNECT_RETRY: Json = {
  retry_on: 'connect-failure,refused-stream',
  num_retries: 3,
  retry_host_predicate: [
    {
      name: 'envoy.retry_host_predicates.previous_hosts',
      typed_config: {
        '@type': 'type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate',
      },
    },
  ],
  host_selection_retry_max_attempts: 5,
};

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
function rateLimit(prefix: string, r: RateLimit, auth: boolean, clients: number): Json {
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

const JWT_FILTER = 'envoy.filters.http.jwt_authn';
const JWT_PER_ROUTE = 'type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig';
const RBAC_PER_ROUTE = 'type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute';

/** How a route treats bearer tokens at the edge: required, checked when present, or ignored. */
type TokenRule = 'required' | 'optional' | 'none' | 'admin';

/** The per-route jwt_authn (and, for admin routes, RBAC) config of a token rule. */
function tokenFilters(rule: TokenRule): Record<string, Json> {
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

const TOKEN_HINT =
  'send authorization: Bearer <token> (haystack token create; the SDK and CLI read HAYSTACK_TOKEN)';
const ADMIN_HINT = 'directory and replication reads and reflection need a token with scope admin';

/** Appends a hint to Envoy's local replies of one status (upstream answers are left as they are). */
function localReply(status: number, hint: string): Json {
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
function guarded(r: Json, rule: TokenRule): Json {
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
function jwtFilter(auth: NonNullable<EnvoyOptions['auth']>): Json {
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

function route(match: Json, cluster: string, extra: Record<string, Json> = {}, perFilter?: Json): Json {
  const { retry, ...rest } = extra;
  return {
    match,
    route: {
      cluster,
      timeout: '0s',
      idle_timeout: '60s',
      ...(retry ? { retry_policy: retry } : {}),
      ...rest,
    },
    ...(perFilter ? { typed_per_filter_config: perFilter } : {}),
  };
}

function cluster(
  name: string,
  hosts: Upstream[],
  healthService: string,
  o: EnvoyOptions,
  role: string,
): Json {
  const interval = o.healthCheckIntervalMs ?? 2000;
  return {
    name,
    ...(o.upstreamTls ? { transport_socket: upstreamTlsSocket(o.upstreamTls, role) } : {}),
    type: o.dns ? 'STRICT_DNS' : 'STATIC',
    ...(o.dns ? { dns_lookup_family: 'V4_PREFERRED' } : {}),
    connect_timeout: '1s',
    lb_policy: 'LEAST_REQUEST',
    per_connection_buffer_limit_bytes: 1024 * 1024,
    typed_extension_protocol_options: {
      [HTTP_OPTS]: {
        '@type': `type.googleapis.com/${HTTP_OPTS}`,
        // HTTP/2 to every upstream: over TLS (ALPN h2) by default, h2c when plaintext.
        explicit_http_config: {
          http2_protocol_options: {
            max_concurrent_streams: 1000,
            initial_stream_window_size: 1024 * 1024,
            initial_connection_window_size: 4 * 1024 * 1024,
            connection_keepalive: { interval: '10s', timeout: '5s' },
          },
        },
      },
    },
    load_assignment: {
      cluster_name: name,
      endpoints: [
        {
          lb_endpoints: hosts.map((h) => ({
            endpoint: { address: { socket_address: { address: h.host, port_value: h.port } } },
          })),
        },
      ],
    },
    health_checks: [
      {
        timeout: '1s',
        interval: dur(interval),
        // Before any traffic, and for a host just found unhealthy, check at the same pace.
        no_traffic_interval: dur(interval),
        unhealthy_interval: dur(interval),
        unhealthy_threshold: 2,
        healthy_threshold: 1,
        reuse_connection: true,
        grpc_health_check: { service_name: healthService },
      },
    ],
    // Hosts that fail requests are ejected before the next health check notices.
    outlier_detection: {
      consecutive_5xx: 5,
      consecutive_gateway_failure: 3,
      consecutive_local_origin_failure: 2,
      split_external_local_origin_errors: true,
      interval: '1s',
      base_ejection_time: '5s',
      max_ejection_percent: 50,
    },
    circuit_breakers: {
      thresholds: [
        {
          priority: 'DEFAULT',
          max_connections: 10000,
          max_pending_requests: 10000,
          max_requests: 10000,
          max_retries: 100,
        },
      ],
    },
    // Only ever routed to hosts the health checker has seen SERVING.
    common_lb_config: { healthy_panic_threshold: { value: 0 } },
  };
}

/** The OpenTelemetry tracer of the public listener (OTLP/HTTP export, W3C propagation). */
function tracingConfig(t: NonNullable<EnvoyOptions['tracing']>): Json {
  return {
    provider: {
      name: 'envoy.tracers.opentelemetry',
      typed_config: {
        '@type': 'type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig',
        service_name: 'haystack-envoy',
        http_service: {
          http_uri: {
            uri: `http://${t.collector.host}:${t.collector.port}/v1/traces`,
            cluster: 'otel_collector',
            timeout: '2s',
          },
        },
      },
    },
    random_sampling: { value: t.sampledPercent ?? 100 },
    spawn_upstream_span: false,
  };
}

/**
 * A cluster of one host: Envoy's own admin (loopback, STATIC) or the trace
 * collector (a name, STRICT_DNS).
 */
function singleHostCluster(name: string, type: 'STATIC' | 'STRICT_DNS', h: Upstream): Json {
  return {
    name,
    type,
    connect_timeout: '1s',
    load_assignment: {
      cluster_name: name,
      endpoints: [
        {
          lb_endpoints: [
            { endpoint: { address: { socket_address: { address: h.host, port_value: h.port } } } },
          ],
        },
      ],
    },
  };
}

/** GET /stats/prometheus from the admin; anything else 404 (the admin can quit Envoy, dump config...). */
function statsListener(stats: Upstream): Json {
  return {
    name: 'stats',
    address: { socket_address: { address: stats.host, port_value: stats.port } },
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': HCM,
              stat_prefix: 'stats',
              codec_type: 'AUTO',
              normalize_path: true,
              route_config: {
                name: 'stats',
                virtual_hosts: [
                  {
                    name: 'stats',
                    domains: ['*'],
                    routes: [
                      {
                        match: {
                          path: '/stats/prometheus',
                          headers: [{ name: ':method', string_match: { exact: 'GET' } }],
                        },
                        route: { cluster: 'envoy_admin', timeout: '10s' },
                      },
                      {
                        match: { prefix: '/' },
                        direct_response: {
                          status: 404,
                          body: { inline_string: 'only GET /stats/prometheus here\n' },
                        },
                      },
                    ],
                  },
                ],
              },
              http_filters: [
                {
                  name: 'envoy.filters.http.router',
                  typed_config: {
                    '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router',
                  },
                },
              ],
            },
          },
        ],
      },
    ],
  };
}

/**
 * Refusals of uploads whose declared Content-Length cannot hold a blob within MAX_UPLOAD_SIZE,
 * before a byte is forwarded. The limit means blob bytes on every protocol: binary gRPC,
 * gRPC-Web and Connect carry the bytes as they are (plus framing), gRPC-Web text and Connect
 * JSON as base64 (4/3 larger). Each protocol gets RESOURCE_EXHAUSTED in its own form naming
 * the limit: a trailers-only gRPC status (grpc-status 8), Connect's JSON error with 429.
 * Larger uploads with no or a smaller Content-Length reach the gateway, which refuses them
 * with the same status from the upload header or the message size.
 */
function tooLargeRoutes(maxUploadBytes: number): Json[] {
  const message = `upload larger than ${maxUploadBytes} bytes (MAX_UPLOAD_SIZE)`;
  const slack = 64 * 1024;
  const binary = maxUploadBytes + slack;
  const base64 = Math.ceil((maxUploadBytes * 4) / 3) + slack;
  const rule = (contentType: string, limit: number, response: Json): Json => ({
    match: {
      safe_regex: { regex: '^/haystack\\.v1\\.BlobService/(Upload|Put)$' },
      headers: [
        { name: 'content-type', string_match: { safe_regex: { regex: contentType } } },
        { name: 'content-length', range_match: { start: limit + 1, end: Number.MAX_SAFE_INTEGER } },
      ],
    },
    ...(response as Record<string, Json>),
  });
  const grpc: Json = {
    direct_response: { status: 200 },
    response_headers_to_add: [
      { header: { key: 'grpc-status', value: '8' } },
      // Printable ASCII without '%' needs no percent-encoding (gRPC spec); Envoy would read % as a command.
      { header: { key: 'grpc-message', value: message } },
    ],
  };
  const connect: Json = {
    direct_response: {
      status: 429,
      body: { inline_string: JSON.stringify({ code: 'resource_exhausted', message }) },
    },
    response_headers_to_add: [{ header: { key: 'content-type', value: 'application/json' } }],
  };
  // Exact types: Envoy matches the route on the request as it arrived (the CORS filter asks
  // first), before the grpc_web filter turns gRPC-Web into application/grpc.
  return [
    rule('^application/grpc(-web-text(\\+proto)?|(-web)?\\+json)(;.*)?$', base64, grpc),
    rule('^application/grpc(-web)?(\\+proto)?(;.*)?$', binary, grpc),
    rule('^application/(connect\\+)?json(;.*)?$', base64, connect),
    rule('^application/(connect\\+)?proto(;.*)?$', binary, connect),
  ];
}

/** The whole Envoy bootstrap for the options. */
export function renderEnvoyConfig(o: EnvoyOptions): Json {
  if (o.corsOrigins.some((x) => !/^https?:\/\/[A-Za-z0-9.-]+(:\d{1,5})?$/.test(x))) {
    throw new Error(
      `corsOrigins ${JSON.stringify(o.corsOrigins)}: each must be an exact origin like https://photos.example.com ("*" is not allowed)`,
    );
  }
  const exact = (path: string): Json => ({ path });
  const auth = o.auth !== undefined;
  // Without edge checks there is no per-route token config (the gateways still check).
  const g = (r: Json, rule: TokenRule): Json => (auth ? guarded(r, rule) : r);
  const clients = o.rateLimitClients ?? DEFAULT_RATE_LIMIT_CLIENTS;
  const limit = (prefix: string, r: RateLimit) => rateLimit(prefix, r, auth, clients);
  const read = limit('read_rate_limit', o.readRateLimit ?? DEFAULT_READ_RATE_LIMIT);
  const operatorRoutes: Json[] = [
    // Directory and replication reads (dashboard, `haystack stats`) and reflection: admin only.
    ...['Locate', 'List', 'GetClusterStatus'].map((m) =>
      route(exact(`/haystack.v1.DirectoryService/${m}`), 'directories', {
        retry: IDEMPOTENT_RETRY,
        timeout: '30s',
      }),
    ),
    ...['GetBlobStatus', 'GetStats', 'ListTasks'].map((m) =>
      route(exact(`/haystack.v1.ReplicationService/${m}`), 'replication', {
        retry: IDEMPOTENT_RETRY,
        timeout: '30s',
      }),
    ),
    route({ prefix: '/grpc.reflection.v1.ServerReflection/' }, 'gateways', { retry: CONNECT_RETRY }),
    route({ prefix: '/grpc.reflection.v1alpha.ServerReflection/' }, 'gateways', { retry: CONNECT_RETRY }),
  ];
  const routes: Json[] = [
    ...tooLargeRoutes(o.maxUploadBytes).map((r) => g(r, 'none')),
    // Writes: never repeated by Envoy (a stream cannot be replayed; the SDK retries what it can).
    ...['Upload', 'Put'].map((m) =>
      g(
        route(
          exact(`/haystack.v1.BlobService/${m}`),
          'gateways',
          { retry: CONNECT_RETRY, idle_timeout: '120s' },
          limit('upload_rate_limit', o.uploadRateLimit),
        ),
        'required',
      ),
    ),
    g(
      route(
        exact('/haystack.v1.BlobService/Delete'),
        'gateways',
        { retry: IDEMPOTENT_RETRY, timeout: '30s' },
        limit('delete_rate_limit', o.deleteRateLimit),
      ),
      'required',
    ),
    // Reads (Download, Stat, List, GetStats, CreateSignedUrl) are idempotent.
    g(
      route({ prefix: '/haystack.v1.BlobService/' }, 'gateways', { retry: IDEMPOTENT_RETRY }, read),
      'required',
    ),
    // Plain HTTP uploads (curl -T): writes, limited like Upload.
    ...(
      [
        ['path', '/blobs', 'POST'],
        ['path', '/blobs/', 'POST'],
        ['prefix', '/blobs/', 'PUT'],
      ] as const
    ).map(([kind, value, method]) =>
      g(
        route(
          { [kind]: value, headers: [{ name: ':method', string_match: { exact: method } }] },
          'gateways',
          { retry: CONNECT_RETRY, idle_timeout: '120s' },
          limit('upload_rate_limit', o.uploadRateLimit),
        ),
        'required',
      ),
    ),
    // GET /blobs/{id}: a token when sent must be valid; signed URLs and PUBLIC_READS are the gateway's.
    g(route({ prefix: '/blobs/' }, 'gateways', { retry: IDEMPOTENT_RETRY }, read), 'optional'),
    g({ match: { path: '/' }, redirect: { path_redirect: '/ui/' } }, 'none'),
    g(route({ prefix: '/ui' }, 'gateways', { retry: IDEMPOTENT_RETRY, timeout: '30s' }), 'none'),
    g(
      route(exact('/.well-known/jwks.json'), 'gateways', { retry: IDEMPOTENT_RETRY, timeout: '10s' }),
      'none',
    ),
    ...(auth ? operatorRoutes.map((r) => guarded(r, 'admin')) : []),
    g(
      route(exact('/grpc.health.v1.Health/Check'), 'gateways', { retry: IDEMPOTENT_RETRY, timeout: '10s' }),
      'none',
    ),
    g(
      { match: { prefix: '/' }, direct_response: { status: 404, body: { inline_string: 'not found\n' } } },
      'none',
    ),
  ];

  const corsPolicy: Json = {
    '@type': CORS,
    allow_origin_string_match: o.corsOrigins.map((x) => ({ exact: x })),
    allow_methods: 'GET, HEAD, POST, PUT, OPTIONS',
    allow_headers:
      'content-type, x-grpc-web, x-user-agent, grpc-timeout, connect-protocol-version, connect-timeout-ms, connect-content-encoding, connect-accept-encoding, range, if-none-match, if-range, if-match, if-modified-since, if-unmodified-since, content-disposition, content-digest, authorization',
    expose_headers:
      'grpc-status, grpc-message, grpc-status-details-bin, content-range, content-length, content-disposition, etag, last-modified, location, x-haystack-rate-limited',
    max_age: '86400',
  };

  const hcm: Json = {
    '@type': HCM,
    stat_prefix: 'public',
    ...(o.tracing ? { tracing: tracingConfig(o.tracing) } : {}),
    codec_type: 'AUTO',
    use_remote_address: true,
    normalize_path: true,
    merge_slashes: true,
    path_with_escaped_slashes_action: 'REJECT_REQUEST',
    max_request_headers_kb: 64,
    // Uploads and downloads may be long: no overall deadline, but idle streams end.
    request_timeout: '0s',
    stream_idle_timeout: '120s',
    // After a response with Connection: close, Envoy waits this long for the client to read
    // and close. The 1 s default cut slow readers off mid-body (a 200 with Content-Length
    // missing bytes); each write that makes progress restarts the timer.
    delayed_close_timeout: '60s',
    common_http_protocol_options: { idle_timeout: '300s', headers_with_underscores_action: 'REJECT_REQUEST' },
    http2_protocol_options: {
      max_concurrent_streams: 1000,
      initial_stream_window_size: 1024 * 1024,
      initial_connection_window_size: 4 * 1024 * 1024,
    },
    access_log: [
      {
        name: o.accessLogPath ? 'envoy.access_loggers.file' : 'envoy.access_loggers.stdout',
        typed_config: {
          ...(o.accessLogPath
            ? {
                '@type': 'type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog',
                path: o.accessLogPath,
              }
            : { '@type': 'type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog' }),
          log_format: { json_format: ACCESS_LOG_FORMAT },
        },
      },
    ],
    // Envoy's own refusals (jwt_authn 401, RBAC 403) say what to do, as the gateways' do.
    ...(o.auth
      ? { local_reply_config: { mappers: [localReply(401, TOKEN_HINT), localReply(403, ADMIN_HINT)] } }
      : {}),
    route_config: {
      name: 'haystack',
      virtual_hosts: [
        {
          name: 'haystack',
          domains: ['*'],
          typed_per_filter_config: { 'envoy.filters.http.cors': corsPolicy },
          routes,
        },
      ],
    },
    http_filters: [
      // Preflights are answered first; gRPC-Web becomes gRPC before the rate limiter
      // so its refusals reach browsers as proper gRPC-Web statuses.
      {
        name: 'envoy.filters.http.cors',
        typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors' },
      },
      {
        name: 'envoy.filters.http.grpc_web',
        typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb' },
      },
      // Tokens before the rate limiter: refused calls never spend the bucket.
      ...(o.auth ? [jwtFilter(o.auth)] : []),
      ...(o.auth
        ? [
            {
              name: 'envoy.filters.http.rbac',
              // No policy here (all allowed); admin routes carry theirs (RBACPerRoute).
              typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC' },
            },
          ]
        : []),
      {
        name: 'envoy.filters.http.local_ratelimit',
        typed_config: { '@type': RATE, stat_prefix: 'rate_limit' },
      },
      {
        name: 'envoy.filters.http.router',
        typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' },
      },
    ],
  };

  return {
    admin: { address: { socket_address: { address: o.admin.host, port_value: o.admin.port } } },
    static_resources: {
      listeners: [
        ...(o.stats ? [statsListener(o.stats)] : []),
        {
          name: 'public',
          address: { socket_address: { address: o.listen.host, port_value: o.listen.port } },
          per_connection_buffer_limit_bytes: 1024 * 1024,
          filter_chains: [
            { filters: [{ name: 'envoy.filters.network.http_connection_manager', typed_config: hcm }] },
          ],
        },
      ],
      clusters: [
        cluster('gateways', o.gateways, 'haystack.v1.BlobService', o, 'gateway'),
        cluster('directories', o.directories, 'haystack.v1.DirectoryService', o, 'directory'),
        cluster('replication', o.replication, 'haystack.v1.ReplicationService', o, 'replication'),
        ...(o.stats ? [singleHostCluster('envoy_admin', 'STATIC', o.admin)] : []),
        ...(o.tracing ? [singleHostCluster('otel_collector', 'STRICT_DNS', o.tracing.collector)] : []),
      ],
    },
    layered_runtime: {
      layers: [
        {
          name: 'static',
          static_layer: {
            overload: { global_downstream_max_connections: 50000 },
            // Spans leave within a second (Envoy's default flush is every 5 s).
            ...(o.tracing ? { tracing: { opentelemetry: { flush_interval_ms: 1000 } } } : {}),
          },
        },
      ],
    },
  };
}

const PLAIN = /^[A-Za-z_][A-Za-z0-9_.@/-]*$/;

/** YAML for a JSON value (block style; strings quoted unless plainly safe). */
export function toYaml(v: Json, indent = 0): string {
  const pad = ' '.repeat(indent);
  const scalar = (x: Json): string => {
    if (typeof x === 'string') {
      if (PLAIN.test(x) && !/^(true|false|null|yes|no|on|off|y|n)$/i.test(x)) return x;
      // Double quotes inside and nothing to escape: single quotes (literal), as Biome formats YAML.
      if (x.includes('"') && !/['\\\n]/.test(x)) return `'${x}'`;
      return JSON.stringify(x);
    }
    return JSON.stringify(x);
  };
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    return v
      .map((item) => {
        if (item !== null && typeof item === 'object' && !(Array.isArray(item) && item.length === 0)) {
          const inner = toYaml(item, indent + 2);
          return `${pad}- ${inner.slice(indent + 2)}`;
        }
        return `${pad}- ${scalar(item)}`;
      })
      .join('\n');
  }
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v);
    if (entries.length === 0) return '{}';
    return entries
      .map(([k, x]) => {
        const key = PLAIN.test(k) ? k : JSON.stringify(k);
        if (
          x !== null &&
          typeof x === 'object' &&
          (Array.isArray(x) ? x.length > 0 : Object.keys(x).length > 0)
        ) {
          return `${pad}${key}:\n${toYaml(x, indent + 2)}`;
        }
        return `${pad}${key}: ${x !== null && typeof x === 'object' ? (Array.isArray(x) ? '[]' : '{}') : scalar(x)}`;
      })
      .join('\n');
  }
  return `${pad}${scalar(v)}`;
}
