import { type Env, EnvReader } from './env.js';

/** Settings every server process shares. */
export interface ServerConfig {
  /** host:port to serve gRPC, gRPC-Web, Connect and HTTP on. */
  listen: string;
  /** pino level. */
  logLevel: string;
  /** How long SIGTERM waits for in-flight calls before cutting them. */
  shutdownGraceMs: number;
}

export const COMMON_ENV_HELP = `
  LISTEN                 host:port to serve on (flag --listen)
  LOG_LEVEL              trace|debug|info|warn|error (default info)
  SHUTDOWN_GRACE         time SIGTERM waits for in-flight calls (default 10s)`;

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
  };
}

export function envReader(env: Env = process.env): EnvReader {
  return new EnvReader(env);
}
