import { readFileSync } from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from './processes.js';

/** The version in package.json (what `haystack --version` prints). */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')) as {
    version?: string;
  };
  return pkg.version ?? '0.0.0';
}
