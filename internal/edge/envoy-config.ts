/**
 * Envoy (v3 API) in front of Haystack: one public listener carrying gRPC,
 * gRPC-Web, Connect and plain HTTP (/blobs/{id}, /ui/); load balancing with
 * active gRPC health checks and outlier detection across gateways, directories
 * and replication managers; retries of idempotent calls; CORS; local rate limits
 * on uploads and deletes; request size limits; a JSON access log.
 *
 * `renderEnvoyConfig` builds the config for `haystack dev` and the tests (static
 * loopback addresses) and for deploy/ (DNS names); `toYaml` writes it out.
 */

export interface Upstream {
  host: string;
  port: number;
}

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
  gateways: Upstream[];
  directories: Upstream[];
  replication: Upstream[];
  /** Upstreams are DNS names resolved continuously (deploy) instead of IP addresses. */
  dns?: boolean;
  /** Origins allowed by CORS; "*" allows any. */
  corsOrigins: string[];
  /** Upload and Put requests. */
  uploadRateLimit: RateLimit;
  /** Delete requests. */
  deleteRateLimit: RateLimit;
  /** Uploads whose declared Content-Length is larger are refused (413) at the edge. */
  maxUploadBytes: number;
  /** Access log file (default: Envoy's stdout). */
  accessLogPath?: string;
  /** Active health check period (default 2 s). */
  healthCheckIntervalMs?: number;
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

function rateLimit(prefix: string, r: RateLimit): Json {
  const all = { default_value: { numerator: 100, denominator: 'HUNDRED' }, runtime_key: `${prefix}_enabled` };
  return {
    'envoy.filters.http.local_ratelimit': {
      '@type': RATE,
      stat_prefix: prefix,
      token_bucket: {
        max_tokens: r.maxTokens,
        tokens_per_fill: r.tokensPerFill,
        fill_interval: dur(r.fillIntervalMs),
      },
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

function cluster(name: string, hosts: Upstream[], healthService: string, o: EnvoyOptions): Json {
  const interval = o.healthCheckIntervalMs ?? 2000;
  return {
    name,
    type: o.dns ? 'STRICT_DNS' : 'STATIC',
    ...(o.dns ? { dns_lookup_family: 'V4_PREFERRED' } : {}),
    connect_timeout: '1s',
    lb_policy: 'LEAST_REQUEST',
    per_connection_buffer_limit_bytes: 1024 * 1024,
    typed_extension_protocol_options: {
      [HTTP_OPTS]: {
        '@type': `type.googleapis.com/${HTTP_OPTS}`,
        // Haystack servers speak h2c with prior knowledge (and HTTP/1.1) on one port.
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

/** The whole Envoy bootstrap for the options. */
export function renderEnvoyConfig(o: EnvoyOptions): Json {
  const allowAll = o.corsOrigins.includes('*');
  const exact = (path: string): Json => ({ path });
  const tooLarge: Json = {
    match: {
      safe_regex: { regex: '^/haystack\\.v1\\.BlobService/(Upload|Put)$' },
      headers: [
        {
          name: 'content-length',
          range_match: { start: o.maxUploadBytes + 64 * 1024 + 1, end: Number.MAX_SAFE_INTEGER },
        },
      ],
    },
    direct_response: {
      status: 413,
      body: { inline_string: `upload larger than ${o.maxUploadBytes} bytes (MAX_UPLOAD_SIZE)\n` },
    },
  };
  const routes: Json[] = [
    tooLarge,
    // Writes: never repeated by Envoy (a stream cannot be replayed; the SDK retries what it can).
    route(
      exact('/haystack.v1.BlobService/Upload'),
      'gateways',
      { retry: CONNECT_RETRY, idle_timeout: '120s' },
      rateLimit('upload_rate_limit', o.uploadRateLimit),
    ),
    route(
      exact('/haystack.v1.BlobService/Put'),
      'gateways',
      { retry: CONNECT_RETRY, idle_timeout: '120s' },
      rateLimit('upload_rate_limit', o.uploadRateLimit),
    ),
    route(
      exact('/haystack.v1.BlobService/Delete'),
      'gateways',
      { retry: IDEMPOTENT_RETRY, timeout: '30s' },
      rateLimit('delete_rate_limit', o.deleteRateLimit),
    ),
    // Reads (Download, Stat, List, GetStats) are idempotent.
    route({ prefix: '/haystack.v1.BlobService/' }, 'gateways', { retry: IDEMPOTENT_RETRY }),
    route({ prefix: '/blobs/' }, 'gateways', { retry: IDEMPOTENT_RETRY }),
    { match: { path: '/' }, redirect: { path_redirect: '/ui/' } },
    route({ prefix: '/ui' }, 'gateways', { retry: IDEMPOTENT_RETRY, timeout: '30s' }),
    // Directory and replication reads for the dashboard and `haystack stats`; their
    // write and internal methods are not exposed.
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
    route(exact('/grpc.health.v1.Health/Check'), 'gateways', { retry: IDEMPOTENT_RETRY, timeout: '10s' }),
    route({ prefix: '/grpc.reflection.v1.ServerReflection/' }, 'gateways', { retry: CONNECT_RETRY }),
    route({ prefix: '/grpc.reflection.v1alpha.ServerReflection/' }, 'gateways', { retry: CONNECT_RETRY }),
    { match: { prefix: '/' }, direct_response: { status: 404, body: { inline_string: 'not found\n' } } },
  ];

  const corsPolicy: Json = {
    '@type': CORS,
    allow_origin_string_match: allowAll
      ? [{ safe_regex: { regex: '.*' } }]
      : o.corsOrigins.map((x) => ({ exact: x })),
    allow_methods: 'GET, HEAD, POST, OPTIONS',
    allow_headers:
      'content-type, x-grpc-web, x-user-agent, grpc-timeout, connect-protocol-version, connect-timeout-ms, connect-content-encoding, connect-accept-encoding, range, if-none-match, if-range, authorization',
    expose_headers:
      'grpc-status, grpc-message, grpc-status-details-bin, content-range, content-length, etag, x-haystack-rate-limited',
    max_age: '86400',
  };

  const hcm: Json = {
    '@type': HCM,
    stat_prefix: 'public',
    codec_type: 'AUTO',
    use_remote_address: true,
    normalize_path: true,
    merge_slashes: true,
    path_with_escaped_slashes_action: 'REJECT_REQUEST',
    max_request_headers_kb: 64,
    // Uploads and downloads may be long: no overall deadline, but idle streams end.
    request_timeout: '0s',
    stream_idle_timeout: '120s',
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
        cluster('gateways', o.gateways, 'haystack.v1.BlobService', o),
        cluster('directories', o.directories, 'haystack.v1.DirectoryService', o),
        cluster('replication', o.replication, 'haystack.v1.ReplicationService', o),
      ],
    },
    layered_runtime: {
      layers: [{ name: 'static', static_layer: { overload: { global_downstream_max_connections: 50000 } } }],
    },
  };
}

const PLAIN = /^[A-Za-z_][A-Za-z0-9_.@/-]*$/;

/** YAML for a JSON value (block style; strings quoted unless plainly safe). */
export function toYaml(v: Json, indent = 0): string {
  const pad = ' '.repeat(indent);
  const scalar = (x: Json): string => {
    if (typeof x === 'string') {
      return PLAIN.test(x) && !/^(true|false|null|yes|no|on|off|y|n)$/i.test(x) ? x : JSON.stringify(x);
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
