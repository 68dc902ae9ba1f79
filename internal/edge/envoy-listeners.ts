/**
 * Parts of Envoy's listeners: the JSON access log, the OpenTelemetry tracer of the public
 * listener, and the stats listener that exposes only GET /stats/prometheus.
 */
import type { Upstream } from './envoy-clusters.js';
import { HCM, type Json } from './envoy-json.js';

/**
 * Export a span per request (OpenTelemetry, OTLP/HTTP to this collector) and pass W3C
 * `traceparent` on to the gateways: Envoy is the root of each trace.
 */
export interface EdgeTracing {
  collector: Upstream;
  sampledPercent?: number;
}

/** One JSON object per request. */
export const ACCESS_LOG_FORMAT: Json = {
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

/** The OpenTelemetry tracer of the public listener (OTLP/HTTP export, W3C propagation). */
export function tracingConfig(t: EdgeTracing): Json {
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

/** GET /stats/prometheus from the admin; anything else 404 (the admin can quit Envoy, dump config...). */
/** How long a listener waits for a request's headers once its first byte came (Envoy's default: forever). */
export const REQUEST_HEADERS_TIMEOUT = '10s';

export function statsListener(stats: Upstream): Json {
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
              // Scrapes are small and quick: bounded headers, requests and idle connections.
              request_headers_timeout: REQUEST_HEADERS_TIMEOUT,
              request_timeout: '30s',
              stream_idle_timeout: '30s',
              common_http_protocol_options: { idle_timeout: '120s' },
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
