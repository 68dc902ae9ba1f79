import type { ChildProcess } from 'node:child_process';

/** Children handed to killOnExit that have not exited yet. */
const live = new Map<ChildProcess, NodeJS.Signals>();
let installed = false;

/**
 * kill -9 `child` when this process exits, however it exits (a test runner ending a
 * worker whose hook timed out mid-start, `haystack dev` after an uncaught error): a
 * server must never outlive the process that owns it, holding its ports and files.
 * One `exit` listener for all children; it stays synchronous, as exit handlers must.
 * A SIGKILL of this process itself still orphans them (nothing runs then).
 * `signal`: SIGTERM for a child that must stop children of its own (`haystack dev`).
 */
export function killOnExit(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (child.exitCode !== null || child.signalCode !== null) return;
  live.set(child, signal);
  child.once('exit', () => live.delete(child));
  if (installed) return;
  installed = true;
  process.once('exit', () => {
    for (const [c, sig] of live) c.kill(sig);
  });
}
