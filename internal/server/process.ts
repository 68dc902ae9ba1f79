import type { Logger } from './logger.js';

/**
 * Ends the process cleanly on SIGTERM/SIGINT: runs `close` once, exits 0 when it
 * finishes (1 if it throws). A second signal exits at once.
 */
export function exitOnSignals(log: Logger, close: () => Promise<void>): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'signal received');
    close().then(
      () => {
        log.flush?.();
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        log.flush?.();
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}
