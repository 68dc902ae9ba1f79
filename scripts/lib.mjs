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

/**
 * Whether node_modules holds what package-lock.json lists: our stamp from the last `npm ci` we
 * ran, or npm's own record of its last install (node_modules/.package-lock.json, written by
 * any `npm ci` / `npm install`) agreeing on every package's version and integrity. Optional
 * packages for other platforms are never installed, so their absence counts as agreement.
 */
export function npmDepsCurrent() {
  const lock = readFileSync(path.join(root, 'package-lock.json'));
  const stamp = path.join(root, 'node_modules/.haystack-lock-hash');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === lockHash(lock)) return true;
  const hidden = path.join(root, 'node_modules/.package-lock.json');
  if (!existsSync(hidden)) return false;
  try {
    const want = JSON.parse(lock.toString('utf8')).packages ?? {};
    const have = JSON.parse(readFileSync(hidden, 'utf8')).packages ?? {};
    if (Object.keys(want).length < 2) return false; // no package list to compare (old lockfile)
    return Object.entries(want).every(([name, p]) => {
      if (name === '') return true; // the project itself
      const h = have[name];
      if (!h) return Boolean(p.optional || p.devOptional);
      return h.version === p.version && h.integrity === p.integrity;
    });
  } catch {
    return false;
  }
}

const lockHash = (lock) => createHash('sha256').update(lock).digest('hex');

/** npm ci when node_modules is missing or does not match package-lock.json (npmDepsCurrent). */
export function ensureNpmDeps() {
  if (npmDepsCurrent()) return;
  const lock = readFileSync(path.join(root, 'package-lock.json'));
  console.error('[setup] installing npm packages (npm ci)');
  run('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error']);
  writeFileSync(path.join(root, 'node_modules/.haystack-lock-hash'), lockHash(lock));
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
