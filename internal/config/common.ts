import { readTransportSecurity, SECURITY_ENV_HELP, type TransportSecurity } from '../security/tls-config.js';
import { DEFAULT_LISTENER_LIMITS as L, type ListenerLimits } from '../server/listener-limits.js';
import { type Env, EnvReader } from './env.js';

/** Settings every server process shares. */
export interface ServerConfig {
  /** host:port to serve gRPC, gRPC-Web, Connect and HTTP on. */
  listen: string;
  /** pino level. */
  logLevel: string;
  /** How long SIGTERM waits for in-flight calls before cutting them. */
  shutdownGraceMs: number;
  /** mTLS identity and trust (or INSECURE_PLAINTEXT); see internal/security/tls-config.ts. */
  security: TransportSecurity;
  /** Handshake, header and idle timeouts and the stream cap of the listener. */
  limits: ListenerLimits;
}

export const COMMON_ENV_HELP = `
  LISTEN                 host:port to serve on (flag --listen)
  LOG_LEVEL              trace|debug|info|warn|error (default info)
  SHUTDOWN_GRACE         time SIGTERM waits for in-flight calls (default 10s)
  LISTEN_HANDSHAKE_TIMEOUT  a connection must finish TLS (or show its protocol) within (default 10s)
  LISTEN_HEADERS_TIMEOUT an HTTP/1.1 request must send its headers within (default 15s)
  LISTEN_IDLE_TIMEOUT    a connection without open calls is closed after this idle time (default 120s)
  LISTEN_MAX_STREAMS     concurrent HTTP/2 streams per connection (default 1000)
  LISTEN_REQUEST_IDLE_TIMEOUT  an upload whose request stream sends nothing this long is cancelled (default 60s)${SECURITY_ENV_HELP}`;

export function readServerConfig(
  r: EnvReader,
  defaultListen: string,
  flags: { listen?: string },
): ServerConfig {
  const listen = flags.listen ?? r.hostPort('LISTEN', defaultListen);
  return {
    listen,
    logLevel: r.matching(
      'LOG_LEVEL',
      'info',
      /^(trace|debug|info|warn|error|fatal|silent)$/,
      'trace|debug|info|warn|error',
    ),
    shutdownGraceMs: r.duration('SHUTDOWN_GRACE', 10_000, { minMs: 0, maxMs: 600_000 }),
    security: readTransportSecurity(r, undefined),
    limits: {
      handshakeMs: r.duration('LISTEN_HANDSHAKE_TIMEOUT', L.handshakeMs, { minMs: 100, maxMs: 600_000 }),
      headersMs: r.duration('LISTEN_HEADERS_TIMEOUT', L.headersMs, { minMs: 100, maxMs: 600_000 }),
      idleMs: r.duration('LISTEN_IDLE_TIMEOUT', L.idleMs, { minMs: 100, maxMs: 3_600_000 }),
      maxStreamsPerConnection: r.int('LISTEN_MAX_STREAMS', L.maxStreamsPerConnection, {
        min: 1,
        max: 100_000,
      }),
      requestIdleMs: r.duration('LISTEN_REQUEST_IDLE_TIMEOUT', L.requestIdleMs, {
        minMs: 100,
        maxMs: 3_600_000,
      }),
    },
  };
}

export function envReader(env: Env = process.env): EnvReader {
  return new EnvReader(env);
}
