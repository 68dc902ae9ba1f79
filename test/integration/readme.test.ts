import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEV_STORES } from '../../internal/cli/dev.js';
import { HAYSTACK_BIN, PROJECT_ROOT } from '../../internal/cli/processes.js';
import { bytes } from '../helpers/store-client.js';
import { exec, tmpName } from '../helpers/tools.js';

/**
 * The fenced shell blocks of a Markdown file (```sh, ```bash, ```shell; indented fences
 * too), each as its lines with the fence's indentation removed. Lines that start the cluster
 * or the suite themselves (`npm start`, `npm test`) are left out: the runner provides the
 * running cluster, as the README asks.
 */
function shellBlocks(markdown: string): string[] {
  const blocks: string[] = [];
  const fence = /^( *)```(sh|bash|shell)\s*\n([\s\S]*?)^\1```\s*$/gm;
  for (const m of markdown.matchAll(fence)) {
    const indent = m[1]!.length;
    const lines = m[3]!
      .split('\n')
      .map((l) => l.slice(Math.min(indent, l.length - l.trimStart().length)))
      .filter((l) => l.trim() !== '' && !/^npm (start|test)\b/.test(l.trim()));
    if (lines.length > 0) blocks.push(lines.join('\n'));
  }
  return blocks;
}

const MARK = '@@readme-block';

/**
 * One bash script run in a private network namespace (`unshare -rn`), so the README's default
 * ports are free even on a shared machine: starts `haystack dev` (what `npm start` runs after
 * its build) on its defaults, takes the `export PATH=…` line it prints as a user would, then
 * runs every block verbatim with `bash -e -o pipefail` from a folder holding the files the
 * examples name (photo.jpg, photos/), and stops the cluster with `haystack dev stop`.
 */
function runnerScript(blocks: string[], work: string, data: string): string {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  return [
    'set -u',
    'ip link set lo up',
    `cd ${q(work)}`,
    `${q(process.execPath)} ${q(HAYSTACK_BIN)} dev --data ${q(data)} > dev.out 2> dev.err &`,
    'for i in $(seq 900); do grep -q "cluster ready" dev.out && break; sleep 0.2; done',
    'grep -q "cluster ready" dev.out || { echo "cluster not ready"; tail -50 dev.err; exit 90; }',
    'eval "$(grep -m1 "export PATH=" dev.out)"',
    // The dev admin token it prints, exported as the README says.
    'eval "$(grep -m1 "export HAYSTACK_TOKEN=" dev.out)"',
    ...blocks.flatMap((b, i) => [
      `echo ${q(`${MARK} ${i} start`)}`,
      `bash -e -o pipefail -c ${q(b)} 2>&1; echo "${MARK} ${i} exit $?"`,
    ]),
    `${q(process.execPath)} ${q(HAYSTACK_BIN)} dev stop --data ${q(data)} >/dev/null`,
  ].join('\n');
}

describe('README examples run verbatim against a started dev cluster', () => {
  const blocks = shellBlocks(readFileSync(path.join(PROJECT_ROOT, 'README.md'), 'utf8'));

  it('finds the examples (grpcurl, CLI, curl)', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(4);
    expect(blocks.join('\n')).toMatch(/grpcurl/);
    expect(blocks.join('\n')).toMatch(/npx haystack upload/);
    expect(blocks.join('\n')).toMatch(/npx haystack keys rewrap/);
  });

  it('every block exits 0 (no "command not found", no error)', async () => {
    // Inside the checkout, so that `npx haystack` finds this package's binary.
    const work = path.join(PROJECT_ROOT, 'test/env/readme-run');
    rmSync(work, { recursive: true, force: true });
    mkdirSync(path.join(work, 'photos'), { recursive: true });
    writeFileSync(path.join(work, 'photo.jpg'), bytes(50_000, 51));
    writeFileSync(path.join(work, 'photos/a.jpg'), bytes(20_000, 52));
    writeFileSync(path.join(work, 'photos/b.jpg'), bytes(30_000, 53));
    const script = `${tmpName('readme')}.sh`;
    // The README's paths are relative to the default data directory (./data, as `npm start`
    // makes it in the checkout), so the runner's cluster keeps its data under work/data.
    writeFileSync(script, runnerScript(blocks, work, 'data'));
    const env = { ...process.env };
    for (const k of Object.keys(env))
      if (k.startsWith('DEV_') || k === 'HAYSTACK_URL' || k === 'HAYSTACK_TOKEN') delete env[k];
    const r = await exec('unshare', ['-rn', 'bash', script], { timeoutMs: 400_000, env });
    const out = r.stdout + r.stderr;
    expect(r.code, out.slice(-4000)).toBe(0);
    const results = blocks.map((b, i) => {
      const start = out.indexOf(`${MARK} ${i} start`);
      const end = out.indexOf(`${MARK} ${i} exit `);
      const code = end < 0 ? 'missing' : out.slice(end).split('\n')[0]!.split(' ').pop();
      return { block: b, code, output: start < 0 || end < 0 ? out.slice(-2000) : out.slice(start, end) };
    });
    for (const res of results) {
      expect(res.code, `${res.block}\n---\n${res.output.slice(-3000)}`).toBe('0');
      expect(res.output).not.toMatch(/command not found/);
    }
    // The KEK rotation example re-wrapped every store's volume keys under the KEK it appended,
    // and no older KEK (the dev one) wraps a key anywhere.
    const rewrap = results.find((r) => r.block.includes('keys rewrap'));
    const lines = rewrap?.output.split('\n').filter((l) => l.includes('volumes re-wrapped under')) ?? [];
    expect(lines.length, rewrap?.output.slice(-3000)).toBe(DEV_STORES);
    // A store with no volume yet holds no key: "KEKs in use: none".
    for (const l of lines) expect(l).toMatch(/re-wrapped under (k-\d+); KEKs in use: (\1|none)$/);
    expect(lines.some((l) => /KEKs in use: k-\d+$/.test(l))).toBe(true);
  }, 420_000);
});
