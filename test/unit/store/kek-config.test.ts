import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../internal/config/env.js';
import { readStoreConfig } from '../../../internal/store/config.js';
import { newKekLine } from '../../../internal/store/crypto/kek.js';
import { tempDir } from './helpers.js';

const PLAIN = { INSECURE_PLAINTEXT: '1' };

describe('store config: KEK_FILE / KEKS', () => {
  it('loads the keys (the last line the newest); none means plaintext', async () => {
    const file = path.join(await tempDir(), 'kek');
    writeFileSync(file, `# comment\n${newKekLine('old')}\n${newKekLine('new')}\n`);
    const cfg = readStoreConfig({}, { ...PLAIN, KEK_FILE: file });
    expect(cfg.keyring?.newest.id).toBe('new');
    expect(cfg.keyring?.keys.map((k) => k.id)).toEqual(['old', 'new']);
    expect(
      readStoreConfig({}, { ...PLAIN, KEKS: `${newKekLine('a')};${newKekLine('b')}` }).keyring?.newest.id,
    ).toBe('b');
    expect(readStoreConfig({}, PLAIN).keyring).toBeUndefined();
  });

  it('refuses a missing, malformed or doubly given key naming the variable', async () => {
    const dir = await tempDir();
    const bad = path.join(dir, 'bad');
    writeFileSync(bad, 'k1 c2hvcnQ=\n');
    for (const [env, want] of [
      [{ KEK_FILE: path.join(dir, 'missing') }, /KEK_FILE=.*cannot read/],
      [{ KEK_FILE: bad }, /KEK_FILE=.*exactly 32 bytes/],
      [{ KEKS: 'no-key-here' }, /KEKS: .*expected/],
      [{ KEK_FILE: bad, KEKS: newKekLine('x') }, /KEK_FILE and KEKS are both set/],
    ] as const) {
      expect(() => readStoreConfig({}, { ...PLAIN, ...env })).toThrow(ConfigError);
      expect(() => readStoreConfig({}, { ...PLAIN, ...env })).toThrow(want);
    }
  });
});
