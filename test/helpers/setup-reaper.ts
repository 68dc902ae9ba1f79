// vitest setup (every test file): vitest ends a worker with SIGTERM, whose default action
// skips `exit` handlers, so servers a test started (killOnExit, child-reaper.ts) would
// outlive it when a hook timed out before its cluster was stopped. Turn SIGTERM into an
// ordinary exit in test workers: the reaper runs, then the worker ends as vitest asked.
const installed = Symbol.for('haystack.test.sigterm-exit');
const g = globalThis as { [installed]?: boolean };
if (!g[installed]) {
  g[installed] = true;
  process.once('SIGTERM', () => process.exit(143));
}
