import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { killOnExit } from '../common/child-reaper.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The project root, whether running from dist/internal/cli or internal/cli. */
export const PROJECT_ROOT = [path.resolve(here, '../../..'), path.resolve(here, '../..')].find((p) =>
  existsSync(path.join(p, 'package.json')),
) as string;
/** The built `haystack` entry point. */
export const HAYSTACK_BIN = path.join(PROJECT_ROOT, 'dist/cmd/haystack.js');

export interface ServerProcess {
  name: string;
  child: ChildProcess;
  address: string;
  /** stderr so far (structured logs), for diagnostics. */
  logs(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code or signal. */
  stop(graceMs?: number): Promise<number | string | null>;
  /** kill -9. */
  kill(): Promise<void>;
  exited: Promise<number | string | null>;
}

export interface SpawnOptions {
  name: string;
  /** Subcommand and flags, e.g. ['store', '--listen', '127.0.0.1:0']. */
  args: string[];
  env?: Record<string, string | undefined>;
  /** Echo the child's stderr lines to ours, prefixed with the name. */
  echo?: boolean;
  /** Append the child's stderr (its pino logs) to this file as well. */
  logFile?: string;
  /** How long to wait for the ready line (ms; default 60 s: a loaded 2-core box starts Node slowly). */
  readyTimeoutMs?: number;
  /** Node flags before the script (benchmarks: --cpu-prof, which NODE_OPTIONS refuses). */
  nodeArgs?: string[];
  /** A command that runs the server, e.g. ['ip', 'netns', 'exec', 'ns'] (it must exec, keeping the pid). */
  wrapper?: string[];
}

/**
 * Starts a `haystack` server subcommand as a child process and waits for the JSON
 * ready line it prints on stdout once it serves.
 */
export function spawnServer(opts: SpawnOptions): Promise<ServerProcess> {
  const [command, ...pre] = [...(opts.wrapper ?? []), process.execPath];
  const child = spawn(command as string, [...pre, ...(opts.nodeArgs ?? []), HAYSTACK_BIN, ...opts.args], {
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  killOnExit(child);
  let stderr = '';
  const file = opts.logFile ? createWriteStream(opts.logFile, { flags: 'a' }) : undefined;
  child.once('exit', () => file?.end());
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => {
    file?.write(d);
    stderr += d;
    if (stderr.length > 1_000_000) stderr = stderr.slice(-500_000);
    if (opts.echo)
      for (const line of d.split('\n')) if (line) process.stderr.write(`[${opts.name}] ${line}\n`);
  });
  const exited = new Promise<number | string | null>((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? signal));
  });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${opts.name} did not become ready in time:\n${stderr.slice(-4000)}`));
    }, opts.readyTimeoutMs ?? 60_000);
    child.stdout?.setEncoding('utf8');
    const onData = (d: string) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('{"ready"'));
      if (!line) return;
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stdout?.resume();
      const { address } = JSON.parse(line) as { address: string };
      resolve({
        name: opts.name,
        child,
        address,
        logs: () => stderr,
        exited,
        stop: async (graceMs = 15_000) => {
          if (child.exitCode === null && child.signalCode === null) {
            child.kill('SIGTERM');
            const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
            const r = await exited;
            clearTimeout(t);
            return r;
          }
          return exited;
        },
        kill: async () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
          await exited;
        },
      });
    };
    child.stdout?.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${opts.name} exited (${code}) before it was ready:\n${stderr.slice(-4000)}`));
    });
  });
}
