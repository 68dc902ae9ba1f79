import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { writevFully } from '../../../internal/store/fs-util.js';
import { rand, tempDir } from './helpers.js';

describe('writevFully', () => {
  it('writes the pieces back to back at the position, past IOV_MAX pieces and with empty ones', async () => {
    const file = path.join(await tempDir(), 'f');
    const before = rand(300_000);
    await fs.writeFile(file, before);
    // 1,500 pieces (Linux IOV_MAX is 1024) of 0..199 bytes, some empty.
    const pieces = Array.from({ length: 1500 }, (_, i) => rand((i * 37) % 200));
    const h = await fs.open(file, 'r+');
    try {
      await writevFully(h, pieces, 1234);
      await writevFully(h, [], 5); // nothing to write: the file is unchanged there
    } finally {
      await h.close();
    }
    const total = pieces.reduce((n, p) => n + p.length, 0);
    expect(pieces.some((p) => p.length === 0)).toBe(true);
    const after = await fs.readFile(file);
    expect(after.length).toBe(before.length);
    expect(after.subarray(0, 1234).equals(before.subarray(0, 1234))).toBe(true);
    expect(after.subarray(1234, 1234 + total).equals(Buffer.concat(pieces))).toBe(true);
    expect(after.subarray(1234 + total).equals(before.subarray(1234 + total))).toBe(true);
  });
});
