// Shared steps of `npm start` and `npm test`: install what is missing, quickly when nothing is.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const bin = path.join(root, 'test/env/bin');

export function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
  if (r.status !== 0) {
    console.error(`\n✗ ${cmd} ${args.join(' ')} failed (${r.status ?? r.signal})`);
    process.exit(r.status || 1);
  }
  return r;
}

/** npm ci when node_modules is missing or package-lock.json changed since the last install. */
export function ensureNpmDeps() {
  const lock = path.join(root, 'package-lock.json');
  const stamp = path.join(root, 'node_modules/.haystack-lock-hash');
  const hash = createHash('sha256').update(readFileSync(lock)).digest('hex');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === hash) return;
  console.error('[setup] installing npm packages (npm ci)');
  run('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error']);
  writeFileSync(stamp, hash);
}

/** redis-server, envoy, grpcurl, chromium (or a subset), via test/env/bootstrap.sh. */
export function ensureTools(...which) {
  run('bash', [path.join(root, 'test/env/bootstrap.sh'), ...which]);
  process.env.PATH = `${bin}${path.delimiter}${process.env.PATH}`;
}

export function npx(tool, args, opts) {
  return run(path.join(root, 'node_modules/.bin', tool), args, opts);
}

/**
 * tsc into dist/, then mark package.json's bin targets executable: tsc writes them 0644, and
 * npm only chmods a bin that existed at install time, so on a fresh clone `npx haystack`
 * would be refused ("Permission denied").
 */
export function build() {
  npx('tsc', ['-p', 'tsconfig.json']);
  const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
  for (const target of Object.values(pkg.bin ?? {})) chmodSync(path.join(root, target), 0o755);
}
