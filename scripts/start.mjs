// `npm start`: installs what the cluster needs, builds, and runs `haystack dev`.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { ensureNpmDeps, ensureTools, npx, root } from './lib.mjs';

ensureNpmDeps();
ensureTools('redis', 'envoy');
npx('tsc', ['-p', 'tsconfig.json']);
const child = spawn(
  process.execPath,
  [path.join(root, 'dist/cmd/haystack.js'), 'dev', ...process.argv.slice(2)],
  {
    stdio: 'inherit',
  },
);
// Ctrl-C reaches the whole process group; the dev supervisor stops the cluster.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => child.kill('SIGTERM'));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
