/**
 * `haystack dev`'s key-encryption key (encryption at rest, KEK_FILE): generated
 * on the first start into `<data>/keys/kek` (mode 0600) and reused by later
 * starts on the same data directory, whose volumes it wraps. A throwaway key:
 * deleting it makes the dev stores' volumes unreadable.
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { newKekLine } from '../store/crypto/kek.js';

/** Path of the dev cluster's KEK file (created when missing). */
export async function devKek(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = path.join(dir, 'kek');
  if (!existsSync(file)) {
    const id = `dev-${new Date().toISOString().slice(0, 10)}`;
    await writeFile(file, `# haystack dev: throwaway key-encryption key\n${newKekLine(id)}\n`, {
      mode: 0o600,
      flag: 'wx',
    });
  }
  return file;
}
