import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  type ServerProcess,
  type SpawnOptions,
  spawnServer as spawnHaystack,
} from '../../internal/cli/processes.js';
import { findBinary } from '../../internal/cli/tools.js';
import type { Identity } from '../../internal/security/identity.js';
import { newKekLine } from '../../internal/store/crypto/kek.js';
import { grpcurlTlsArgs, identityEnv, identityForProcess } from './pki.js';
import { testAuthEnv } from './tokens.js';

export type { ServerProcess };

let kekFile: string | undefined;

/**
 * The test run's throwaway key-encryption key (one per test file, so a store
 * restarted on its data directory finds the key its volumes were wrapped with).
 */
export function testKekFile(): string {
  if (!kekFile) {
    const dir = tmpName('kek');
    mkdirSync(dir, { recursive: true });
    kekFile = path.join(dir, 'kek');
    writeFileSync(kekFile, `${newKekLine('test-1')}\n`, { mode: 0o600 });
  }
  return kekFile;
}

/**
 * Starts a `haystack` server subcommand with its own certificate (mTLS), unless
 * the test sets TLS files itself or INSECURE_PLAINTEXT. Stores encrypt at rest
 * with the test KEK (testKekFile) unless the test sets KEK_FILE or KEKS (even empty).
 */
export async function spawnServer(opts: SpawnOptions): Promise<ServerProcess> {
  // Every test gateway verifies tokens of the test key (tokens.ts), unless the test sets its own.
  let env =
    opts.args[0] === 'gateway' && !opts.env?.AUTH_JWKS_FILE
      ? { ...(await testAuthEnv()), ...opts.env }
      : (opts.env ?? {});
  if (opts.args[0] === 'store' && env.KEK_FILE === undefined && env.KEKS === undefined) {
    env = { KEK_FILE: testKekFile(), ...env };
  }
  opts = { ...opts, env };
  if (env.INSECURE_PLAINTEXT || env.TLS_CERT_FILE) return spawnHaystack(opts);
  const identity = identityForProcess(opts.args, { ...process.env, ...env });
  if (!identity) return spawnHaystack(opts);
  return spawnHaystack({ ...opts, env: { ...(await identityEnv(identity)), ...env } });
}

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

/** The real grpcurl binary over mTLS, as `as` (default the test admin). */
export async function grpcurl(args: string[], input?: string, as?: Identity): Promise<ExecResult> {
  return exec(
    tool('grpcurl'),
    [...(await grpcurlTlsArgs(as)), ...args],
    input === undefined ? {} : { input },
  );
}

/** The real grpcurl binary in plaintext (Envoy's public listener; or to show a TLS port refuses it). */
export function grpcurlPlaintext(args: string[], input?: string): Promise<ExecResult> {
  // The suite's admin token (setup-token.ts) unless the test sends its own authorization.
  const token = process.env.HAYSTACK_TOKEN;
  const auth =
    token && !args.some((a) => /^authorization:/i.test(a)) ? ['-H', `authorization: Bearer ${token}`] : [];
  return exec(tool('grpcurl'), ['-plaintext', ...auth, ...args], input === undefined ? {} : { input });
}

export function tmpName(prefix: string): string {
  return path.join(
    process.env.TMPDIR ?? '/tmp',
    `${prefix}-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`,
  );
}

/** True while `pid` runs (exists and is not a zombie waiting to be reaped); Linux /proc. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[2] !== 'Z';
  } catch {
    return false;
  }
}
