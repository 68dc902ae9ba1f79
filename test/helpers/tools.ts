import { execFile } from 'node:child_process';
import path from 'node:path';
import { findBinary } from '../../internal/cli/tools.js';

export { type ServerProcess, spawnServer } from '../../internal/cli/processes.js';

/** Path of a bootstrap-installed tool; fails loudly when missing (npm test installs them). */
export function tool(name: string): string {
  const p = findBinary(name);
  if (!p) throw new Error(`${name} not found: run test/env/bootstrap.sh (npm test does)`);
  return p;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function exec(
  file: string,
  args: string[],
  opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = execFile(
      file,
      args,
      { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 64 * 1024 * 1024, env: opts.env ?? process.env },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** The real grpcurl binary, plaintext. */
export function grpcurl(args: string[], input?: string): Promise<ExecResult> {
  return exec(tool('grpcurl'), ['-plaintext', ...args], input === undefined ? {} : { input });
}

export function tmpName(prefix: string): string {
  return path.join(
    process.env.TMPDIR ?? '/tmp',
    `${prefix}-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`,
  );
}
