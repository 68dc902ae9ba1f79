/**
 * Key-encryption keys (KEKs) of a store: read from `KEK_FILE` (a file, e.g. a
 * mounted Kubernetes Secret or compose file volume) or the `KEKS` variable.
 *
 * Text format, one key per line, `#` comments and blank lines ignored:
 *
 *     <id> <base64 of 32 random bytes>
 *
 * `id` is 1-64 characters [A-Za-z0-9._-]. The LAST line is the newest key: it
 * wraps every volume data key (DEK); the older ones only unwrap, so rotation
 * is "append a line, restart the stores" (each store re-wraps its DEKs under
 * the newest KEK at startup), then "remove the old line" once every store has
 * started. docs/security.md, Encryption at rest.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

/** AES-256 key size in bytes. */
export const KEY_SIZE = 32;
const KEK_ID = /^[A-Za-z0-9._-]{1,64}$/;

export interface Kek {
  id: string;
  /** 32 bytes (AES-256). */
  key: Buffer;
}

/** The KEKs a store holds; `newest` wraps, every one unwraps. */
export class Keyring {
  private readonly byId: Map<string, Kek>;

  constructor(readonly keys: readonly Kek[]) {
    if (keys.length === 0) throw new Error('a keyring needs at least one key');
    this.byId = new Map(keys.map((k) => [k.id, k]));
  }

  get newest(): Kek {
    return this.keys[this.keys.length - 1]!;
  }

  get(id: string): Kek | undefined {
    return this.byId.get(id);
  }
}

/**
 * Parses KEK text (format above). Throws an Error saying which line is wrong
 * and why (never echoing key material).
 */
export function parseKeks(text: string): Keyring {
  const keys: Kek[] = [];
  // Newlines in a file; ';' also separates keys given inline (KEKS).
  const lines = text.split(/\r?\n|;/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    const parts = line.split(/\s+/);
    const where = `entry ${i + 1}`;
    if (parts.length !== 2) throw new Error(`${where}: expected "<id> <base64 key>"`);
    const [id, b64] = parts as [string, string];
    if (!KEK_ID.test(id)) throw new Error(`${where}: key id must be 1-64 characters [A-Za-z0-9._-]`);
    const key = Buffer.from(b64, 'base64');
    if (key.length !== KEY_SIZE || key.toString('base64') !== b64.replace(/=+$/, '').padEnd(44, '=')) {
      throw new Error(`${where}: key ${id} is not the base64 of exactly ${KEY_SIZE} bytes`);
    }
    if (keys.some((k) => k.id === id)) throw new Error(`${where}: key id ${id} appears twice`);
    keys.push({ id, key });
  }
  if (keys.length === 0) throw new Error('no key: expected at least one "<id> <base64 key>" line');
  return new Keyring(keys);
}

/** Reads and parses a KEK file; the Error names the problem (unreadable, or which line). */
export function loadKekFile(file: string): Keyring {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseKeks(text);
}

/** A fresh KEK line (`haystack dev`, test clusters, docs): `<id> <base64>`. */
export function newKekLine(id: string): string {
  if (!KEK_ID.test(id)) throw new Error(`key id must be 1-64 characters [A-Za-z0-9._-], got ${id}`);
  return `${id} ${randomBytes(KEY_SIZE).toString('base64')}`;
}
