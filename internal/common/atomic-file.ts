import { open, rename } from 'node:fs/promises';
import path from 'node:path';

/** fsync a directory so renames/creates/unlinks in it are durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const h = await open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/**
 * Replaces `dir/name` so that after a crash it holds either the old or the new
 * content, never a mix: write `name.tmp`, fsync it, rename over `name`, fsync `dir`.
 * One writer per file at a time (callers serialize: the temp name is shared).
 */
export async function writeAtomic(dir: string, name: string, content: Uint8Array): Promise<void> {
  const tmp = path.join(dir, `${name}.tmp`);
  const fh = await open(tmp, 'w');
  try {
    // writeFile writes until every byte is written (a single write may be short:
    // a file-size limit, a signal) and rejects on the error that stops it.
    await fh.writeFile(content);
    await fh.datasync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path.join(dir, name));
  await fsyncDir(dir);
}
