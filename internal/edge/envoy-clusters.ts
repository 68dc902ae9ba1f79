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

/**
 * An upstream cluster of gateways, directories or replication managers: HTTP/2 (mTLS when
 * `o.upstreamTls`), least-request balancing, active gRPC health checks of `healthService`,
 * outlier detection; routed only to hosts seen SERVING while any is. `panicWhenNoneServing`:
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
