// vitest globalSetup: one temporary directory per run, removed at its end. Every
// helper names its files under TMPDIR (tools.ts `tmpName`: certificates, tokens,
// cluster data), and the workers and the servers they spawn inherit it, so a direct
// `npx vitest run …` leaves nothing in /tmp, as `npm test` (scripts/test.mjs) does.
// HAYSTACK_KEEP_TEST_DATA=1 keeps it for a post-mortem, as scripts/test.mjs does.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export default function setup(): () => void {
  const dir = mkdtempSync(path.join(tmpdir(), 'haystack-vitest-'));
  process.env.TMPDIR = dir;
  return () => {
    if (process.env.HAYSTACK_KEEP_TEST_DATA === '1') console.error(`test data kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  };
}
