import { type ChildProcess, spawn } from 'node:child_process';
import { HAYSTACK_BIN } from '../../internal/cli/processes.js';
import { killOnExit } from '../../internal/common/child-reaper.js';
import { claimPort, PORT_MAX, PORT_MIN, portFree } from './ports.js';
import { tmpName } from './tools.js';

/** Ports `haystack dev` uses, as DEV_* variables, from one free block of 20 consecutive ports. */
export interface DevPorts {
  env: Record<string, string>;
  envoy: number;
  stores: number[];
}

/** A block of free loopback ports laid out the way `haystack dev` numbers its processes. */
export async function devPorts(stores = 5): Promise<DevPorts> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = PORT_MIN + Math.floor(Math.random() * (PORT_MAX - PORT_MIN - 20));
    const all = Array.from({ length: 20 }, (_, i) => base + i);
    if (!(await Promise.all(all.map(portFree))).every(Boolean)) continue;
    // Claimed like freePort's ports, so no other worker or suite hands one of them out.
    if (!all.every((p) => claimPort(p))) continue;
    const storeBase = base + 3;
    return {
      env: {
        DEV_DIRECTORY_PORT: String(base),
        DEV_STORE_PORT: String(storeBase),
        DEV_GATEWAY_PORT: String(storeBase + stores),
        DEV_REPLICATION_PORT: String(base + 12),
        DEV_REDIS_PORT: String(base + 13),
        DEV_CACHE_REDIS_PORT: String(base + 14),
        DEV_ENVOY_PORT: String(base + 15),
        DEV_ENVOY_ADMIN_PORT: String(base + 16),
      },
      envoy: base + 15,
      stores: Array.from({ length: stores }, (_, i) => storeBase + i),
    };
  }
  throw new Error('no block of 20 free ports found');
}

/** `haystack dev` running as a child process, its stdout collected. */
export interface DevRun {
  child: ChildProcess;
  dataDir: string;
  ports: DevPorts;
  stdout(): string;
  stderr(): string;
  exited: Promise<number | string | null>;
  /** The dev admin token it printed (`export HAYSTACK_TOKEN=…`). */
  token: string;
}

/**
 * Starts `haystack dev` (the built binary, as `npm start` runs it) on free ports with extra
 * environment, and waits for "cluster ready".
 */
export async function startDev(env: Record<string, string> = {}, timeoutMs = 120_000): Promise<DevRun> {
  const ports = await devPorts();
  const dataDir = tmpName('dev');
  const child = spawn(process.execPath, [HAYSTACK_BIN, 'dev', '--data', dataDir], {
    env: { ...process.env, ...ports.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  killOnExit(child, 'SIGTERM');
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const exited = new Promise<number | string | null>((r) => child.once('exit', (c, s) => r(c ?? s)));
  const deadline = Date.now() + timeoutMs;
  let code: number | string | null | undefined;
  void exited.then((c) => {
    code = c;
  });
  while (!out.includes('cluster ready')) {
    if (code !== undefined) throw new Error(`haystack dev exited (${code}):\n${err.slice(-4000)}`);
    if (Date.now() > deadline) {
      child.kill('SIGTERM');
      throw new Error(`haystack dev not ready in ${timeoutMs} ms:\n${err.slice(-4000)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const token = /export HAYSTACK_TOKEN=(\S+)/.exec(out)?.[1] ?? '';
  return { child, dataDir, ports, stdout: () => out, stderr: () => err, exited, token };
}
