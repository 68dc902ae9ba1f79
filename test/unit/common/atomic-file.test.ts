import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { writeAtomic } from '../../../internal/common/atomic-file.js';

const run = promisify(execFile);
const module = fileURLToPath(new URL('../../../internal/common/atomic-file.ts', import.meta.url));

// Review finding (d) of N5: writeAtomic made one write and ignored how much of it
// was written, so a short write left a truncated file in place (a truncated
// fencing-terms.json stops the store at its next start).
describe('writeAtomic', () => {
  it('never leaves a short file in place: a write the file-size limit cuts short fails', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'atomic-file-'));
    try {
      const old = new Uint8Array(100).fill(1);
      await writeAtomic(dir, 'f', old);
      // A real short write: RLIMIT_FSIZE of 1 KiB (ulimit -f 1) cuts the first write of
      // 4 KiB at 1 KiB; the next write fails EFBIG (node ignores SIGXFSZ).
      const script = `import(${JSON.stringify(module)}).then(async ({ writeAtomic }) => {
        try { await writeAtomic(${JSON.stringify(dir)}, 'f', new Uint8Array(4096).fill(7)); console.log('resolved'); }
        catch (e) { console.log('rejected', e.code); }
      });`;
      const { stdout } = await run('bash', [
        '-c',
        'ulimit -f 1 && exec "$0" --import tsx -e "$1"',
        process.execPath,
        script,
      ]);
      expect(stdout.trim()).toBe('rejected EFBIG');
      expect(await fs.readFile(path.join(dir, 'f'))).toEqual(Buffer.from(old));
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
