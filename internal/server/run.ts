import type { ServerConfig } from '../config/common.js';
import { setClientSecurity } from '../rpc/transport.js';
import { describeIdentity } from '../security/identity.js';
import { createLogger, type Logger } from './logger.js';
import { exitOnSignals } from './process.js';
import { type RunningServer, type ServerOptions, startServer } from './server.js';
import { startTracing } from './tracing.js';

/**
 * The life of a server process: logger, transport security (its own identity
 * for the listener and for every client it opens), start, a ready line on
 * stdout (for supervisors such as `haystack dev` and the tests), graceful exit
 * on signals.
 */
export async function runServerProcess(
  component: string,
  instance: string,
  config: ServerConfig,
  build: (
    log: Logger,
  ) => Promise<
    Omit<
      ServerOptions,
      'component' | 'instance' | 'listen' | 'log' | 'shutdownGraceMs' | 'security' | 'limits'
    >
  >,
): Promise<RunningServer> {
  const log = createLogger(component, instance, config.logLevel);
  const { security } = config;
  if (security.mode === 'plaintext') {
    log.warn(
      'INSECURE_PLAINTEXT=1: NO TLS, NO CALLER IDENTITIES, NO AUTHORIZATION. Anyone who reaches this port can call anything. Never run a shared or production cluster like this.',
    );
  } else if (security.identity.role !== component) {
    // A certificate of another role would make every peer refuse this process (or trust it for the wrong things).
    throw new Error(
      `TLS_CERT_FILE is the certificate of ${describeIdentity(security.identity)}, but this process is a ${component}`,
    );
  } else if (security.identity.id !== instance) {
    throw new Error(
      `TLS_CERT_FILE is the certificate of ${describeIdentity(security.identity)}, but this process is ${component} "${instance}"`,
    );
  } else {
    log.info({ identity: `${security.identity.role}/${security.identity.id}` }, 'mTLS identity loaded');
  }
  setClientSecurity(security);
  // Before anything opens a client: spans need the provider (off without an OTLP endpoint).
  let tracing: ReturnType<typeof startTracing>;
  try {
    tracing = startTracing(component, instance);
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(2);
  }
  const parts = await build(log);
  const server = await startServer({
    component,
    instance,
    listen: config.listen,
    log,
    shutdownGraceMs: config.shutdownGraceMs,
    security,
    limits: config.limits,
    ...parts,
  });
  exitOnSignals(log, async () => {
    await server.close();
    await tracing?.shutdown();
  });
  process.stdout.write(
    `${JSON.stringify({ ready: component, instance, address: `${server.host}:${server.port}` })}\n`,
  );
  return server;
}
