// `npm test`: installs what the suite needs, then checks contracts, lint, types and runs every test.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { build, ensureNpmDeps, ensureTools, npx, root } from './lib.mjs';

const started = Date.now();
const step = (name) => console.error(`\n▶ ${name}  (+${((Date.now() - started) / 1000).toFixed(0)}s)`);

step('dependencies');
ensureNpmDeps();
ensureTools();

step('contracts: buf lint, gen/ freshness, buf breaking');
npx('buf', ['lint']);
const tmp = mkdtempSync(path.join(tmpdir(), 'haystack-gen-'));
npx('buf', ['generate', '-o', tmp]);
const diff = spawnSync('diff', ['-r', path.join(tmp, 'gen'), path.join(root, 'gen')], { encoding: 'utf8' });
rmSync(tmp, { recursive: true, force: true });
if (diff.status !== 0) {
  console.error(`${diff.stdout.slice(0, 2000)}\n✗ gen/ is stale: run \`npm run generate\` and commit gen/`);
  process.exit(1);
}
// Guard the committed contract against breaking edits in the working tree.
if (spawnSync('git', ['rev-parse', '--verify', '-q', 'HEAD'], { cwd: root, stdio: 'ignore' }).status === 0) {
  npx('buf', ['breaking', '--against', '.git#ref=HEAD']);
}

step('format and lint (biome)');
npx('biome', ['check', '.']);

step('types and build (tsc)');
npx('tsc', ['-p', 'tsconfig.check.json']);
build();

step('tests (vitest)');
// Every test's data (volumes, logs, certificates, browser profiles) lives under one
// directory removed afterwards: a run leaves nothing behind in /tmp, so runs on a
// small disk do not fill it (HAYSTACK_KEEP_TEST_DATA=1 keeps it for a post-mortem).
const runTmp = mkdtempSync(path.join(tmpdir(), 'haystack-test-'));
const vitest = spawnSync(path.join(root, 'node_modules/.bin/vitest'), ['run', ...process.argv.slice(2)], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, TMPDIR: runTmp },
});
if (process.env.HAYSTACK_KEEP_TEST_DATA === '1') console.error(`test data kept in ${runTmp}`);
else rmSync(runTmp, { recursive: true, force: true, maxRetries: 5 });
if (vitest.status !== 0) {
  console.error(`\n✗ vitest failed (${vitest.status ?? vitest.signal})`);
  process.exit(vitest.status || 1);
}
console.error(`\n✓ npm test passed in ${((Date.now() - started) / 1000).toFixed(0)}s`);
