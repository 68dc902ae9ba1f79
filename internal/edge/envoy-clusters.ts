/**
 * Envoy's upstream clusters: the services behind the public listener, Envoy's own admin,
 * and the trace collector.
 */
import type { EnvoyOptions } from './envoy-config.js';
import { dur, HTTP_OPTS, type Json } from './envoy-json.js';

export interface Upstream {
  host: string;
  port: number;
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
function upstreamTlsSocket(tls: UpstreamTls, role: string, protocol: UpstreamProtocol): Json {
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
      common_tls_context: {
        alpn_protocols: [protocol === 'h2' ? 'h2' : 'http/1.1'],
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

/**
 * How Envoy speaks to a cluster's hosts. `h2` carries gRPC, Connect and gRPC-Web. `http1`
 * carries the plain HTTP routes (GET/PUT /blobs, the dashboard): Node serves an HTTP/1.1
 * request for about half the CPU of an HTTP/2 stream, and Envoy spends less on it too
 * (docs/benchmarks.md, "Envoy to the gateways over HTTP/1.1").
 */
export type UpstreamProtocol = 'h2' | 'http1';

/**
 * Envoy closes an idle HTTP/1.1 upstream connection after this, before the gateway's own
 * keep-alive timeout (65 s, server/tls-listener.ts) can close it under a request Envoy
 * just sent: such a request would fail, and an upload cannot be retried.
 */
export const HTTP1_UPSTREAM_IDLE = '50s';

/** The gateways again, over HTTP/1.1: the cluster of the plain HTTP routes. */
export const GATEWAYS_HTTP1 = 'gateways_http1';

/**
 * An upstream cluster of gateways, directories or replication managers: HTTP/2 or HTTP/1.1
 * (`protocol`; mTLS when `o.upstreamTls`), least-request balancing, active health checks
 * (gRPC Health of `healthService` over HTTP/2, GET /healthz over HTTP/1.1), outlier
 * detection; routed only to hosts seen SERVING while any is. `panicWhenNoneServing`:
 * when none is, route to all of them (gateways, directories: a host every check timed out
 * on is usually just slow) rather than answer "no healthy upstream" (replication: a standby
 * is NOT_SERVING by design and would refuse with FAILED_PRECONDITION, which no one retries).
 */
export function cluster(
  name: string,
  hosts: Upstream[],
  healthService: string,
  o: Pick<EnvoyOptions, 'healthCheckIntervalMs' | 'upstreamTls' | 'dns'>,
  role: string,
  panicWhenNoneServing = true,
  protocol: UpstreamProtocol = 'h2',
): Json {
  const interval = o.healthCheckIntervalMs ?? 2000;
  const http: Json =
    protocol === 'h2'
      ? {
          // HTTP/2: over TLS (ALPN h2) by default, h2c when plaintext.
          explicit_http_config: {
            http2_protocol_options: {
              max_concurrent_streams: 1000,
              initial_stream_window_size: 1024 * 1024,
              initial_connection_window_size: 4 * 1024 * 1024,
              connection_keepalive: { interval: '10s', timeout: '5s' },
            },
          },
        }
      : {
          common_http_protocol_options: { idle_timeout: HTTP1_UPSTREAM_IDLE },
          explicit_http_config: { http_protocol_options: {} },
        };
  return {
    name,
    ...(o.upstreamTls ? { transport_socket: upstreamTlsSocket(o.upstreamTls, role, protocol) } : {}),
    type: o.dns ? 'STRICT_DNS' : 'STATIC',
    ...(o.dns ? { dns_lookup_family: 'V4_PREFERRED' } : {}),
    connect_timeout: '1s',
    lb_policy: 'LEAST_REQUEST',
    per_connection_buffer_limit_bytes: 1024 * 1024,
    typed_extension_protocol_options: {
      [HTTP_OPTS]: { '@type': `type.googleapis.com/${HTTP_OPTS}`, ...http },
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
        ...(protocol === 'h2'
          ? { grpc_health_check: { service_name: healthService } }
          : { http_health_check: { path: '/healthz' } }),
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
    // Panic below 1 % healthy, i.e. only when no host is (every check timed out, as on a
    // CPU-starved box): a host really down fails the request as it would have anyway, one
    // merely slow serves it.
    common_lb_config: { healthy_panic_threshold: { value: panicWhenNoneServing ? 1 : 0 } },
  };
}

/**
 * A cluster of one host: Envoy's own admin (loopback, STATIC) or the trace
 * collector (a name, STRICT_DNS).
 */
export function singleHostCluster(name: string, type: 'STATIC' | 'STRICT_DNS', h: Upstream): Json {
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
