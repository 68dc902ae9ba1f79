import { readFileSync } from 'node:fs';
import { readFile, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** `haystack dev`'s pidfile: `<data>/haystack-dev.pid`, the supervisor's pid in decimal. */
export function pidfilePath(dataDir: string): string {
  return path.join(dataDir, 'haystack-dev.pid');
}

/** Thrown by claimPidfile when a live supervisor already owns the data folder. */
export class DevAlreadyRunning extends Error {
  constructor(readonly pid: number) {
    super(`already running (pid ${pid})`);
  }
}

/**
 * True when `pid` is a live process that is a haystack supervisor. On Linux the command line is
 * checked too, so a pid recycled by an unrelated process after a crash counts as stale.
 */
function isLiveSupervisor(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('haystack');
  } catch {
    return true; // no /proc (macOS): trust kill(0)
  }
}

/** The pid of the running supervisor for this data folder, if any. */
export async function runningDevPid(dataDir: string): Promise<number | undefined> {
  const text = await readFile(pidfilePath(dataDir), 'utf8').catch(() => '');
  const pid = Number.parseInt(text.trim(), 10);
  return Number.isSafeInteger(pid) && pid > 0 && isLiveSupervisor(pid) ? pid : undefined;
}

/**
 * Records this process as the data folder's supervisor (O_EXCL create, so two starts racing
 * cannot both win). A stale file (its process gone) is replaced.
 * @throws DevAlreadyRunning when a live supervisor holds it.
 */
export async function claimPidfile(dataDir: string): Promise<void> {
  const file = pidfilePath(dataDir);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await writeFile(file, `${process.pid}\n`, { flag: 'wx' });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = await runningDevPid(dataDir);
    if (pid !== undefined) throw new DevAlreadyRunning(pid);
    await unlink(file).catch(() => {});
  }
  throw new Error(`could not claim ${file}`);
}

/** Removes the pidfile if it is still ours. */
export async function releasePidfile(dataDir: string): Promise<void> {
  const text = await readFile(pidfilePath(dataDir), 'utf8').catch(() => '');
  if (text.trim() === String(process.pid)) await unlink(pidfilePath(dataDir)).catch(() => {});
}

/**
 * `haystack dev stop`: SIGTERM to the supervisor recorded in the pidfile, then waits until it has
 * stopped every child and exited. Resolves with the pid stopped, or undefined when none ran.
 * @throws Error when it is still running after `timeoutMs`.
 */
export async function stopDev(dataDir: string, timeoutMs = 60_000): Promise<number | undefined> {
  const pid = await runningDevPid(dataDir);
  if (pid === undefined) return undefined;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + timeoutMs;
  while (isLiveSupervisor(pid)) {
    if (Date.now() > deadline) throw new Error(`pid ${pid} still running after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return pid;
}
