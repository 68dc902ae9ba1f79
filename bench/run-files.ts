// Where a bench run leaves its figures: <out>/<UTC stamp>-<name>.json (everything,
// machine and command included) and .md (what it printed).
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { machine } from './report.js';

/**
 * Writes `<outDir>/<stamp>-<name>.json` ({date, command, machine, ...data}) and
 * `.md` (`md`); returns the two paths. `machineAtStart` is report.ts machine() taken
 * when the run began (its load average); the end load average is added here.
 */
export function writeRunFiles(
  outDir: string,
  name: string,
  machineAtStart: ReturnType<typeof machine>,
  data: Record<string, unknown>,
  md: string,
): { json: string; md: string } {
  const stamp = new Date()
    .toISOString()
    .replace(/:/g, '-')
    .replace(/\.\d+Z$/, 'Z');
  const dir = path.resolve(outDir);
  mkdirSync(dir, { recursive: true });
  const base = path.join(dir, `${stamp}-${name}`);
  const doc = {
    date: new Date().toISOString(),
    command: `npm run bench:${name} -- ${process.argv.slice(2).join(' ')}`.trim(),
    machine: { ...machineAtStart, loadAverageEnd: os.loadavg().map((x) => Math.round(x * 100) / 100) },
    ...data,
  };
  writeFileSync(`${base}.json`, `${JSON.stringify(doc, null, 2)}\n`);
  writeFileSync(`${base}.md`, md);
  return { json: `${base}.json`, md: `${base}.md` };
}

/** "load average before a, b, c, after d, e, f" (1, 5 and 15 minutes) for a run's report. */
export function loadAverageLine(before: number[]): string {
  const f = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(', ');
  return `load average before ${f(before)}, after ${f(os.loadavg())}`;
}
