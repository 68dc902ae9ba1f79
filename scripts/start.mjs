// `npm start`: installs what the cluster needs, builds, and runs `haystack dev`.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { build, ensureNpmDeps, ensureTools, root } from './lib.mjs';

ensureNpmDeps();
ensureTools('redis', 'envoy', 'grpcurl');
build();
const child = spawn(
  process.execPath,
  [path.join(root, 'dist/cmd/haystack.js'), 'dev', ...process.argv.slice(2)],
  {
    stdio: 'inherit',
  },
);
// Ctrl-C reaches the whole process group; the dev supervisor stops the cluster. A SIGTERM or
// SIGHUP sent to this process alone (`npm start &` then `kill %1`) is passed on.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => child.kill('SIGTERM'));
process.on('SIGHUP', () => child.kill('SIGTERM'));
// npm itself may die of a SIGTERM without passing it on (we are then re-parented): stop too.
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) child.kill('SIGTERM');
}, 500).unref();
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
