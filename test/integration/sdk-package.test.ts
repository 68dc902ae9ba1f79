import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { exec, tmpName } from '../helpers/tools.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const PKG = path.join(ROOT, 'packages/sdk');
/** Packages of the servers that must stay out of the SDK's dependency closure. */
const SERVER_DEPS = [
  'ioredis',
  'pino',
  'prom-client',
  '@grpc/grpc-js',
  '@node-rs/crc32',
  'commander',
  'cli-progress',
];

interface PackResult {
  filename: string;
  files: { path: string }[];
}

async function npmPack(args: string[]): Promise<PackResult> {
  const res = await exec('npm', ['pack', '--json', '--loglevel=error', ...args], { timeoutMs: 240_000 });
  expect(res.code, res.stderr).toBe(0);
  // npm prints the prepack script's output before the JSON.
  return (JSON.parse(res.stdout.slice(res.stdout.indexOf('[\n'))) as PackResult[])[0]!;
}

describe('the SDK package (packages/sdk)', () => {
  let dry: PackResult;
  const manifest = JSON.parse(readFileSync(path.join(PKG, 'package.json'), 'utf8')) as {
    name: string;
    dependencies: Record<string, string>;
    scripts: Record<string, string>;
  };

  beforeAll(async () => {
    // prepack builds the SDK (tsc) first.
    dry = await npmPack(['--dry-run', PKG]);
  }, 300_000);

  it('npm pack --dry-run lists the built SDK and nothing else (no tests, bench, deploy, sources)', () => {
    const files = dry.files.map((f) => f.path).sort();
    expect(files).toEqual(
      expect.arrayContaining([
        'package.json',
        'README.md',
        'dist/internal/sdk/index.js',
        'dist/internal/sdk/index.d.ts',
        'dist/internal/sdk/browser.js',
        'dist/internal/sdk/browser.d.ts',
        'dist/gen/haystack/v1/blob_pb.js',
      ]),
    );
    for (const f of files) {
      expect(f).not.toMatch(/(^|\/)(test|tests|bench|deploy|scripts|web|cmd|docs)\//);
      expect(f).not.toMatch(/(?<!\.d)\.ts$/);
      if (f.startsWith('dist/')) expect(f).toMatch(/^dist\/(internal\/sdk|gen\/haystack\/v1)\//);
    }
    // Only the SDK's modules: no server code followed in through imports.
    expect(
      files.filter((f) => f.startsWith('dist/internal/') && !f.startsWith('dist/internal/sdk/')),
    ).toEqual([]);
    expect(manifest.scripts.prepack).toBeDefined();
  });

  it('is the one package to publish: the repository root (servers, CLI, their dependencies) is private', () => {
    const root = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
      private?: boolean;
    };
    expect(root.private).toBe(true);
    expect((manifest as { private?: boolean }).private).toBeUndefined();
  });

  it('its dependency closure (from the lockfile) is the protobuf and Connect runtimes only', () => {
    expect(Object.keys(manifest.dependencies).sort()).toEqual([
      '@bufbuild/protobuf',
      '@connectrpc/connect',
      '@connectrpc/connect-web',
    ]);
    const lock = JSON.parse(readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as {
      packages: Record<
        string,
        { dependencies?: Record<string, string>; peerDependencies?: Record<string, string> }
      >;
    };
    const closure = new Set<string>();
    const visit = (name: string) => {
      if (closure.has(name)) return;
      closure.add(name);
      const p = lock.packages[`node_modules/${name}`];
      expect(p, name).toBeDefined();
      for (const d of Object.keys({ ...p!.dependencies, ...p!.peerDependencies })) visit(d);
    };
    for (const d of Object.keys(manifest.dependencies)) visit(d);
    expect(closure.size).toBeLessThanOrEqual(6);
    for (const s of SERVER_DEPS) expect(closure).not.toContain(s);
  });

  it('installed with only its dependencies, both entries import and a call runs in Node', async () => {
    const dest = tmpName('sdk-pack');
    mkdirSync(dest, { recursive: true });
    const packed = await npmPack(['--ignore-scripts', '--pack-destination', dest, PKG]); // built by the dry run
    const app = path.join(dest, 'app');
    const nm = path.join(app, 'node_modules');
    const target = path.join(nm, manifest.name);
    mkdirSync(target, { recursive: true });
    const untar = await exec('tar', [
      'xzf',
      path.join(dest, packed.filename),
      '--strip-components=1',
      '-C',
      target,
    ]);
    expect(untar.code, untar.stderr).toBe(0);
    // node_modules holds the SDK and its declared dependencies, nothing else.
    for (const d of Object.keys(manifest.dependencies)) {
      mkdirSync(path.dirname(path.join(nm, d)), { recursive: true });
      symlinkSync(path.join(ROOT, 'node_modules', d), path.join(nm, d), 'dir');
    }
    const script = `
      import { HaystackClient, UnavailableError, abortReason } from '${manifest.name}';
      import * as browser from '${manifest.name}/browser';
      const c = new HaystackClient({ url: 'http://127.0.0.1:9', retries: 0 });
      const err = await c.stat('x').catch((e) => e);
      await c.close();
      console.log(JSON.stringify({
        unavailable: err instanceof UnavailableError,
        browser: typeof browser.HaystackClient,
        abort: abortReason(AbortSignal.abort()).name,
      }));`;
    // A file in app/: its bare imports resolve in app/node_modules only.
    writeFileSync(path.join(app, 'main.mjs'), script);
    const res = await exec('node', [path.join(app, 'main.mjs')], {
      timeoutMs: 30_000,
      env: { PATH: process.env.PATH, HOME: process.env.HOME },
    });
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout)).toEqual({ unavailable: true, browser: 'function', abort: 'AbortError' });
  });
});
