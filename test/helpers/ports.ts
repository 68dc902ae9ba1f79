import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';

/**
 * Loopback ports for servers that tests start later, claimed across processes.
 *
 * Checking that a port is free and binding it later is a race; within one process a set
 * closes it, but vitest runs files in several worker processes and other suites may run
 * beside (a fault suite, another clone's CI), and a block one worker chose for `haystack dev`
 * took a port another had just checked (EADDRINUSE in CI). A claim is a file named after the
 * port in one machine-wide folder, created exclusively and holding the claimer's pid; a claim
 * whose process is gone is taken over. Claims are removed when the process exits.
 *
 * Ports are below Linux's ephemeral range (ip_local_port_range, 32768–60999 by default):
 * the kernel never gives them to the local end of an outgoing connection.
 */
const CLAIMS = '/tmp/haystack-port-claims';
export const PORT_MIN = 20_000;
export const PORT_MAX = 31_999;

const mine = new Set<number>();
let cleanupHooked = false;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Claims `port` for this process; false when another live process holds it (or this one already did). */
export function claimPort(port: number): boolean {
  if (mine.has(port)) return false;
  mkdirSync(CLAIMS, { recursive: true });
  const file = `${CLAIMS}/${port}`;
  try {
    writeFileSync(file, String(process.pid), { flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const holder = Number(readFileSync(file, 'utf8'));
    if (holder > 0 && alive(holder)) return false;
    writeFileSync(file, String(process.pid)); // the claimer died: take it over
  }
  mine.add(port);
  if (!cleanupHooked) {
    cleanupHooked = true;
    process.once('exit', () => {
      for (const p of mine) rmSync(`${CLAIMS}/${p}`, { force: true });
    });
  }
  return true;
}

/** Whether nothing listens on 127.0.0.1:`port` right now. */
export function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** A loopback port in PORT_MIN–PORT_MAX that is free and claimed by this process. */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = PORT_MIN + Math.floor(Math.random() * (PORT_MAX - PORT_MIN + 1));
    if ((await portFree(port)) && claimPort(port)) return port;
  }
  throw new Error(`no free loopback port in ${PORT_MIN}–${PORT_MAX} after 200 tries`);
}
