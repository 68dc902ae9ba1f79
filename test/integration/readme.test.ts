import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEV_STORES } from '../../internal/cli/dev.js';
import { HAYSTACK_BIN, PROJECT_ROOT } from '../../internal/cli/processes.js';
import { bytes } from '../helpers/store-client.js';
import { exec, tmpName } from '../helpers/tools.js';

/** The fenced blocks of a Markdown file in one of `langs` (indented fences too), each as its lines with the fence's indentation removed. */
function fencedBlocks(markdown: string, langs: string[]): string[][] {
  const blocks: string[][] = [];
  const fence = new RegExp(`^( *)\`\`\`(${langs.join('|')})\\s*\\n([\\s\\S]*?)^\\1\`\`\`\\s*$`, 'gm');
  for (const m of markdown.matchAll(fence)) {
    const indent = m[1]!.length;
    blocks.push(m[3]!.split('\n').map((l) => l.slice(Math.min(indent, l.length - l.trimStart().length))));
  }
  return blocks;
}

/**
 * The fenced shell blocks of a Markdown file (```sh, ```bash, ```shell). Lines that start
 * the cluster or the suite themselves (`npm start`, `npm test`) are left out: the runner
 * provides the running cluster, as the README asks.
 */
function shellBlocks(markdown: string): string[] {
  return fencedBlocks(markdown, ['sh', 'bash', 'shell'])
    .map((lines) => lines.filter((l) => l.trim() !== '' && !/^npm (start|test)\b/.test(l.trim())))
    .filter((lines) => lines.length > 0)
    .map((lines) => lines.join('\n'));
}

/** The fenced TypeScript blocks of a Markdown file (```ts, ```typescript). */
function typescriptBlocks(markdown: string): string[] {
  return fencedBlocks(markdown, ['ts', 'typescript']).map((lines) => lines.join('\n').trim());
}

const SDK = path.join(PROJECT_ROOT, 'packages/sdk');
const SDK_NAME = (JSON.parse(readFileSync(path.join(SDK, 'package.json'), 'utf8')) as { name: string }).name;

/**
 * A folder holding an app that depends on the SDK package only: node_modules has the package
 * as its own build makes it (packages/sdk/tsconfig.json, what its prepack runs) and its declared
 * dependencies, nothing of the servers; `type: module`, so top-level await works.
 */
async function sdkApp(dir: string): Promise<void> {
  const manifest = JSON.parse(readFileSync(path.join(SDK, 'package.json'), 'utf8')) as {
    dependencies: Record<string, string>;
  };
  const target = path.join(dir, 'node_modules', SDK_NAME);
  mkdirSync(target, { recursive: true });
  copyFileSync(path.join(SDK, 'package.json'), path.join(target, 'package.json'));
  const tsc = path.join(PROJECT_ROOT, 'node_modules/typescript/bin/tsc');
  const build = await exec(
    process.execPath,
    [tsc, '-p', path.join(SDK, 'tsconfig.json'), '--outDir', path.join(target, 'dist')],
    { timeoutMs: 240_000 },
  );
  expect(build.code, build.stdout + build.stderr).toBe(0);
  for (const d of Object.keys(manifest.dependencies)) {
    mkdirSync(path.dirname(path.join(dir, 'node_modules', d)), { recursive: true });
    symlinkSync(path.join(PROJECT_ROOT, 'node_modules', d), path.join(dir, 'node_modules', d), 'dir');
  }
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ private: true, type: 'module' }));
}

const MARK = '@@readme-block';

/**
 * One bash script run in a private network namespace (`unshare -rn`), so the README's default
 * ports are free even on a shared machine: starts `haystack dev` (what `npm start` runs after
 * its build) on its defaults, takes the `export PATH=…` line it prints as a user would, then
 * runs every block verbatim with `bash -e -o pipefail` from a folder holding the files the
 * examples name (photo.jpg, photos/), and stops the cluster with `haystack dev stop`.
 */
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

function runnerScript(blocks: string[], work: string, data: string): string {
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
  const readme = readFileSync(path.join(PROJECT_ROOT, 'README.md'), 'utf8');
  const blocks = shellBlocks(readme);
  const sdkBlocks = typescriptBlocks(readme);
  const app = tmpName('readme-sdk');
  const cat = bytes(40_000, 54);
  let appReady: Promise<void> | undefined;
  const theApp = () => {
    appReady ??= sdkApp(app);
    return appReady;
  };

  it('the TypeScript (SDK) example imports the SDK package and type-checks against it (strict)', async () => {
    expect(sdkBlocks.length).toBe(1);
    const [snippet] = sdkBlocks;
    // The published SDK, not the repository's root package (the servers and their dependencies).
    expect([...snippet!.matchAll(/from '([^']+)'/g)].map((m) => m[1])).toEqual([SDK_NAME]);
    await theApp();
    writeFileSync(path.join(app, 'readme-0.ts'), snippet!);
    writeFileSync(
      path.join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          noEmit: true,
          target: 'es2022',
          module: 'nodenext',
          moduleResolution: 'nodenext',
          types: ['node'],
          typeRoots: [path.join(PROJECT_ROOT, 'node_modules/@types')],
        },
        files: ['readme-0.ts'],
      }),
    );
    const tsc = path.join(PROJECT_ROOT, 'node_modules/typescript/bin/tsc');
    const res = await exec(process.execPath, [tsc, '-p', path.join(app, 'tsconfig.json')], {
      timeoutMs: 120_000,
    });
    expect(res.code, res.stdout + res.stderr).toBe(0);
  }, 300_000);

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
    // The SDK example runs (tsx) in an app folder depending on the SDK package only, from
    // where it finds the file it uploads; what it uploaded and downloaded is printed after it.
    await theApp();
    writeFileSync(path.join(app, 'cat.jpg'), cat);
    const runs = sdkBlocks.map((b, i) => {
      const file = `readme-${i}.run.ts`;
      writeFileSync(
        path.join(app, file),
        `${b}\nconsole.log(JSON.stringify({ readmeSdk: { id: blob.id, bytes: data.length } }));\n`,
      );
      const tsx = path.join(PROJECT_ROOT, 'node_modules/tsx/dist/cli.mjs');
      return `cd ${q(app)} && timeout 120 ${q(process.execPath)} ${q(tsx)} ${file}`;
    });
    const script = `${tmpName('readme')}.sh`;
    // The README's paths are relative to the default data directory (./data, as `npm start`
    // makes it in the checkout), so the runner's cluster keeps its data under work/data.
    writeFileSync(script, runnerScript([...blocks, ...runs], work, 'data'));
    const env = { ...process.env };
    for (const k of Object.keys(env))
      if (k.startsWith('DEV_') || k === 'HAYSTACK_URL' || k === 'HAYSTACK_TOKEN') delete env[k];
    // The whole README (a dev cluster started, every block, the SDK examples) in one budget:
    // 400 s ran out twice at load 46 (three `npm test` runs side by side), killing the script
    // mid-block with no message of its own.
    const budgetMs = 1_000_000;
    const started = Date.now();
    const r = await exec('unshare', ['-rn', 'bash', script], { timeoutMs: budgetMs, env });
    const out = r.stdout + r.stderr;
    const took = Date.now() - started;
    expect(
      r.code,
      `${took >= budgetMs ? `killed after its ${budgetMs / 1000} s budget\n` : ''}${out.slice(-4000)}`,
    ).toBe(0);
    const results = [...blocks, ...runs].map((b, i) => {
      const start = out.indexOf(`${MARK} ${i} start`);
      const end = out.indexOf(`${MARK} ${i} exit `);
      const code = end < 0 ? 'missing' : out.slice(end).split('\n')[0]!.split(' ').pop();
      return { block: b, code, output: start < 0 || end < 0 ? out.slice(-2000) : out.slice(start, end) };
    });
    for (const res of results) {
      expect(res.code, `${res.block}\n---\n${res.output.slice(-3000)}`).toBe('0');
      expect(res.output).not.toMatch(/command not found/);
    }
    // The SDK example uploaded cat.jpg (content-addressed: its SHA-256) and read it back whole.
    const sdkRun = results.find((r) => r.block.includes('.run.ts'));
    const printed = /^\{"readmeSdk".*$/m.exec(sdkRun?.output ?? '')?.[0];
    expect(printed, sdkRun?.output.slice(-3000)).toBeDefined();
    expect(JSON.parse(printed!)).toEqual({
      readmeSdk: { id: createHash('sha256').update(cat).digest('hex'), bytes: cat.length },
    });
    // The KEK rotation example re-wrapped every store's volume keys under the KEK it appended,
    // and no older KEK (the dev one) wraps a key anywhere.
    const rewrap = results.find((r) => r.block.includes('keys rewrap'));
    const lines = rewrap?.output.split('\n').filter((l) => l.includes('volumes re-wrapped under')) ?? [];
    expect(lines.length, rewrap?.output.slice(-3000)).toBe(DEV_STORES);
    // A store with no volume yet holds no key: "KEKs in use: none".
    for (const l of lines) expect(l).toMatch(/re-wrapped under (k-\d+); KEKs in use: (\1|none)$/);
    expect(lines.some((l) => /KEKs in use: k-\d+$/.test(l))).toBe(true);
  }, 1_030_000);
});
