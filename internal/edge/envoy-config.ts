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
import {
  ADMIN_HINT,
  type EdgeAuth,
  guarded,
  jwtFilter,
  localReply,
  TOKEN_HINT,
  type TokenRule,
} from './envoy-auth.js';
import {
  cluster,
  GATEWAYS_HTTP1,
  singleHostCluster,
  type Upstream,
  type UpstreamTls,
} from './envoy-clusters.js';
import { CORS, HCM, type Json, RATE } from './envoy-json.js';
import {
  ACCESS_LOG_FORMAT,
  type EdgeTracing,
  REQUEST_HEADERS_TIMEOUT,
  statsListener,
  tracingConfig,
} from './envoy-listeners.js';
import {
  DEFAULT_RATE_LIMIT_CLIENTS,
  DEFAULT_READ_RATE_LIMIT,
  type RateLimit,
  rateLimit,
} from './envoy-rate-limit.js';
import { CONNECT_RETRY, IDEMPOTENT_RETRY, route, tooLargeRoutes } from './envoy-routes.js';

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
  /** Traces from Envoy (envoy-listeners.ts). */
  tracing?: EdgeTracing;
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
   * Bearer tokens checked at the edge (envoy-auth.ts). Directory and replication reads and
   * reflection are then routed for admin tokens only; unset: they are not routed at all and
   * the gateways alone check tokens.
   */
  auth?: EdgeAuth;
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
          GATEWAYS_HTTP1,
          { retry: CONNECT_RETRY, idle_timeout: '120s' },
          limit('upload_rate_limit', o.uploadRateLimit),
        ),
        'required',
      ),
    ),
    // GET /blobs/{id}: a token when sent must be valid; signed URLs and PUBLIC_READS are the gateway's.
    g(route({ prefix: '/blobs/' }, GATEWAYS_HTTP1, { retry: IDEMPOTENT_RETRY }, read), 'optional'),
    g({ match: { path: '/' }, redirect: { path_redirect: '/ui/' } }, 'none'),
    g(route({ prefix: '/ui' }, GATEWAYS_HTTP1, { retry: IDEMPOTENT_RETRY, timeout: '30s' }), 'none'),
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
    // Uploads and downloads may be long: no overall deadline, but idle streams end, and a
    // request's headers must be in within REQUEST_HEADERS_TIMEOUT (slowloris: a client
    // dribbling headers a byte at a time never goes idle).
    request_timeout: '0s',
    request_headers_timeout: REQUEST_HEADERS_TIMEOUT,
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
        cluster(GATEWAYS_HTTP1, o.gateways, '', o, 'gateway', true, 'http1'),
        cluster('directories', o.directories, 'haystack.v1.DirectoryService', o, 'directory'),
        cluster('replication', o.replication, 'haystack.v1.ReplicationService', o, 'replication', false),
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
