import type { ServerConfig } from '../config/common.js';
import { createLogger, type Logger } from './logger.js';
import { exitOnSignals } from './process.js';
import { type RunningServer, type ServerOptions, startServer } from './server.js';

/**
 * The life of a server process: logger, start, a ready line on stdout (for
 * supervisors such as `haystack dev` and the tests), graceful exit on signals.
 */
export async function runServerProcess(
  component: string,
  instance: string,
  config: ServerConfig,
  build: (
    log: Logger,
  ) => Promise<Omit<ServerOptions, 'component' | 'instance' | 'listen' | 'log' | 'shutdownGraceMs'>>,
): Promise<RunningServer> {
  const log = createLogger(component, instance, config.logLevel);
  const parts = await build(log);
  const server = await startServer({
    component,
    instance,
    listen: config.listen,
    log,
    shutdownGraceMs: config.shutdownGraceMs,
    ...parts,
  });
  exitOnSignals(log, server.close);
  process.stdout.write(
    `${JSON.stringify({ ready: component, instance, address: `${server.host}:${server.port}` })}\n`,
  );
  return server;
}
