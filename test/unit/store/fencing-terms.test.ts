import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  FENCING_TERMS_FILE,
  FencingTerms,
  FencingTermsCorruptError,
} from '../../../internal/store/fencing-terms.js';
import { tempDir } from './helpers.js';

/** Opens the terms of `dir`, counting the writes that reach the disk. */
async function openCounting(dir: string) {
  const writes: { directory: bigint; manager: bigint }[] = [];
  const terms = await FencingTerms.open(dir, (t) => writes.push({ ...t }));
  return { terms, writes };
}

const fileOf = (dir: string) => path.join(dir, FENCING_TERMS_FILE);

describe('FencingTerms: the highest term per issuer, durable', () => {
  it('starts at 0 without a file and reads back every raised term after a reopen', async () => {
    const dir = await tempDir();
    const { terms } = await openCounting(dir);
    expect(terms.highest('directory')).toBe(0n);
    expect(terms.highest('manager')).toBe(0n);
    await terms.raise('directory', 12n);
    await terms.raise('manager', 3n);
    // On disk once raise resolved: a fresh open (a restarted store) sees both.
    const again = await FencingTerms.open(dir);
    expect(again.highest('directory')).toBe(12n);
    expect(again.highest('manager')).toBe(3n);
    expect(again.persisted('directory')).toBe(12n);
  });

  it('is not durable before raise resolves, and is durable after', async () => {
    const dir = await tempDir();
    const { terms } = await openCounting(dir);
    const pending = terms.raise('directory', 7n);
    // Accepted at once (older terms are refused against it) but not yet on disk.
    expect(terms.highest('directory')).toBe(7n);
    expect(terms.persisted('directory')).toBe(0n);
    await pending;
    expect(terms.persisted('directory')).toBe(7n);
    expect(JSON.parse(await fs.readFile(fileOf(dir), 'utf8')).directory).toBe('7');
  });

  it('only rises: an equal or lower term writes nothing and lowers nothing', async () => {
    const dir = await tempDir();
    const { terms, writes } = await openCounting(dir);
    await terms.raise('directory', 9n);
    expect(writes).toHaveLength(1);
    await terms.raise('directory', 9n);
    await terms.raise('directory', 4n);
    expect(writes).toHaveLength(1);
    expect(terms.highest('directory')).toBe(9n);
    expect((await FencingTerms.open(dir)).highest('directory')).toBe(9n);
  });

  it('coalesces rises made together into one write', async () => {
    const dir = await tempDir();
    const { terms, writes } = await openCounting(dir);
    const rises = Array.from({ length: 20 }, (_, i) =>
      terms.raise(i % 2 ? 'manager' : 'directory', BigInt(i + 1)),
    );
    await Promise.all(rises);
    expect(writes).toEqual([{ directory: 19n, manager: 20n }]);
  });

  it('coalesces rises during a write into the one write queued behind it', async () => {
    const dir = await tempDir();
    const { terms, writes } = await openCounting(dir);
    const first = terms.raise('directory', 1n);
    // One turn of the event loop: the write of term 1 has started (its snapshot taken), not ended.
    await new Promise((r) => setImmediate(r));
    expect(writes).toHaveLength(0);
    const later = Array.from({ length: 19 }, (_, i) =>
      terms.raise(i % 2 ? 'manager' : 'directory', BigInt(i + 2)),
    );
    await Promise.all([first, ...later]);
    expect(writes).toEqual([
      { directory: 1n, manager: 0n },
      { directory: 20n, manager: 19n },
    ]);
    const again = await FencingTerms.open(dir);
    expect([again.highest('directory'), again.highest('manager')]).toEqual([20n, 19n]);
  });

  it('keeps the last complete file when a crash left a temp file behind', async () => {
    const dir = await tempDir();
    await (await FencingTerms.open(dir)).raise('directory', 5n);
    // A crash before the rename: a torn temp file, the real one intact.
    await fs.writeFile(`${fileOf(dir)}.tmp`, '{"directory":"6","man');
    const again = await FencingTerms.open(dir);
    expect(again.highest('directory')).toBe(5n);
    // The next rise replaces the stale temp file.
    await again.raise('directory', 6n);
    expect((await FencingTerms.open(dir)).highest('directory')).toBe(6n);
  });

  it('refuses to open a corrupt file instead of starting from 0', async () => {
    const dir = await tempDir();
    await (await FencingTerms.open(dir)).raise('directory', 15n);
    const good = await fs.readFile(fileOf(dir), 'utf8');
    const corruptions = [
      good.replace('"15"', '"16"'), // a flipped digit: the checksum catches it
      good.slice(0, 10), // truncated
      '', // empty
      good.replace('"15"', '15'), // not a decimal string
    ];
    for (const bad of corruptions) {
      await fs.writeFile(fileOf(dir), bad);
      await expect(FencingTerms.open(dir)).rejects.toThrow(FencingTermsCorruptError);
    }
    await fs.writeFile(fileOf(dir), good);
    expect((await FencingTerms.open(dir)).highest('directory')).toBe(15n);
  });

  it('rejects a rise it could not write, keeps refusing below it, and writes on the next rise', async () => {
    const dir = await tempDir();
    const terms = await FencingTerms.open(dir);
    await fs.rm(dir, { recursive: true });
    await expect(terms.raise('manager', 4n)).rejects.toThrow(/ENOENT/);
    // Accepted in memory (older terms stay refused), not durable.
    expect(terms.highest('manager')).toBe(4n);
    expect(terms.persisted('manager')).toBe(0n);
    await fs.mkdir(dir);
    await terms.raise('manager', 4n);
    expect((await FencingTerms.open(dir)).highest('manager')).toBe(4n);
  });
});
