import { copyFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { PROJECT_ROOT } from '../cli/processes.js';

/**
 * Builds the dashboard (web/) into `outDir`: web/main.ts with the browser SDK and
 * Chart.js bundled by esbuild into one ES module, web/hash-worker.ts into another
 * (a Worker), plus index.html and style.css. The
 * gateways serve the result under /ui/ (UI_DIR), Envoy routes /ui/ to them.
 * esbuild is a development dependency: without it (a production install)
 * the dashboard is skipped.
 */
export async function buildWeb(outDir = path.join(PROJECT_ROOT, 'dist/web')): Promise<string> {
  const src = path.join(PROJECT_ROOT, 'web');
  let esbuild: typeof import('esbuild');
  try {
    esbuild = await import('esbuild');
  } catch {
    throw new Error('esbuild is not installed (npm install --include=dev): the dashboard cannot be built');
  }
  await mkdir(outDir, { recursive: true });
  await esbuild.build({
    // The page, and the Worker that hashes and encodes uploads off the main thread.
    entryPoints: [path.join(src, 'main.ts'), path.join(src, 'hash-worker.ts')],
    outdir: outDir,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['es2022'],
    minify: true,
    sourcemap: true,
    legalComments: 'none',
    logLevel: 'silent',
  });
  await Promise.all(
    ['index.html', 'style.css'].map((f) => copyFile(path.join(src, f), path.join(outDir, f))),
  );
  return outDir;
}
