/**
 * Data-encryption keys (DEKs) of one volume, kept wrapped in `<vid>.keys`
 * beside `<vid>.dat`. Each DEK sits in a numbered **key slot** (1..65535); an
 * encrypted needle names its slot in its header. A volume gets slot 1 when it
 * is created (or first opened with a KEK); compaction adds a slot, re-encrypts
 * the needles it copies under it, then drops the slots no needle uses.
 *
 * `<vid>.keys` is JSON, replaced atomically (write `<vid>.keys.tmp`, fsync,
 * rename, fsync the directory):
 *
 *     {"format":1,"volumeId":3,"current":2,
 *      "slots":[{"slot":2,"kek":"k2","wrapped":"<base64 nonce|ciphertext|tag>"}]}
 *
 * A DEK is wrapped with AES-256-GCM under a KEK (fresh 96-bit nonce; the
 * authenticated data binds the volume id and slot, so a wrapped DEK cannot be
 * moved to another volume or slot). Losing every KEK that wrapped a volume's
 * DEKs loses the volume: keep KEKs backed up apart from the disks.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fsyncDir, writeFully } from '../fs-util.js';
import { MAX_KEY_SLOT, NONCE_SIZE, TAG_SIZE } from '../needle.js';
import { KEY_SIZE, type Keyring } from './kek.js';

export const keysName = (id: number) => `${id}.keys`;
const FORMAT = 1;
const WRAPPED_SIZE = NONCE_SIZE + KEY_SIZE + TAG_SIZE;

/** A volume's keys cannot be used: missing/wrong KEK, or a damaged `<vid>.keys`. Names KEK_FILE. */
export class KeyringError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyringError';
  }
}

interface SlotRecord {
  slot: number;
  kek: string;
  wrapped: string;
}

function wrapAad(volumeId: number, slot: number): Buffer {
  return Buffer.from(`haystack volume DEK v1: volume ${volumeId} slot ${slot}`);
}

/** AES-256-GCM wrap of a DEK: nonce | ciphertext | tag (60 bytes). */
export function wrapDek(kek: Buffer, dek: Buffer, volumeId: number, slot: number): Buffer {
  const nonce = randomBytes(NONCE_SIZE);
  const c = createCipheriv('aes-256-gcm', kek, nonce, { authTagLength: TAG_SIZE });
  c.setAAD(wrapAad(volumeId, slot));
  const ct = Buffer.concat([c.update(dek), c.final()]);
  return Buffer.concat([nonce, ct, c.getAuthTag()]);
}

/** Unwraps; undefined when the KEK is not the one that wrapped it (or the bytes changed). */
export function unwrapDek(kek: Buffer, wrapped: Buffer, volumeId: number, slot: number): Buffer | undefined {
  if (wrapped.length !== WRAPPED_SIZE) return undefined;
  try {
    const d = createDecipheriv('aes-256-gcm', kek, wrapped.subarray(0, NONCE_SIZE), {
      authTagLength: TAG_SIZE,
    });
    d.setAAD(wrapAad(volumeId, slot));
    d.setAuthTag(wrapped.subarray(NONCE_SIZE + KEY_SIZE));
    return Buffer.concat([d.update(wrapped.subarray(NONCE_SIZE, NONCE_SIZE + KEY_SIZE)), d.final()]);
  } catch {
    return undefined;
  }
}

/** The unwrapped DEKs of one volume (in memory only) and which slot new needles use. */
export class VolumeKeys {
  /** The KEK id each saved slot is wrapped by on disk. */
  private readonly wrappedBy = new Map<number, string>();
  /** Slots no needle on disk uses any more: not saved again. */
  private readonly retired = new Set<number>();
  /** The last save: saves run one at a time (they share `<vid>.keys.tmp`). */
  private saving: Promise<void> = Promise.resolve();

  constructor(
    readonly volumeId: number,
    public current: number,
    private readonly deks: Map<number, Buffer>,
    wrappedBy: Map<number, string>,
  ) {
    for (const [s, k] of wrappedBy) this.wrappedBy.set(s, k);
  }

  /** The DEK of `slot`, or undefined when this volume has no such slot. */
  dek(slot: number): Buffer | undefined {
    return this.deks.get(slot);
  }

  /** The slots `<vid>.keys` holds (or will hold at the next `save`). */
  get slots(): number[] {
    return [...this.deks.keys()].filter((s) => !this.retired.has(s)).sort((a, b) => a - b);
  }

  /** The KEK id each slot is wrapped by on disk. */
  kekOf(slot: number): string | undefined {
    return this.wrappedBy.get(slot);
  }

  /** Adds a fresh DEK in a new slot and makes it current (in memory; `save` persists). */
  addSlot(): number {
    const slot = Math.max(0, ...this.deks.keys()) + 1;
    if (slot > MAX_KEY_SLOT) throw new KeyringError(`volume ${this.volumeId} has used every key slot`);
    this.deks.set(slot, randomBytes(KEY_SIZE));
    this.current = slot;
    return slot;
  }

  /**
   * Drops every slot except `keep` and the current one from `<vid>.keys` at the
   * next `save`. They stay usable in memory: a read that started on the file
   * compaction just retired still decrypts.
   */
  retire(keep: ReadonlySet<number>): void {
    for (const s of this.deks.keys()) if (s !== this.current && !keep.has(s)) this.retired.add(s);
  }

  /**
   * Writes `<vid>.keys` atomically, every DEK wrapped by the newest KEK of
   * `ring`. Saves of one volume (compaction, a re-wrap) run one after the
   * other, each writing the state of the moment it runs.
   */
  save(dir: string, ring: Keyring): Promise<void> {
    const run = this.saving.then(() => this.write(dir, ring));
    this.saving = run.catch(() => {});
    return run;
  }

  private async write(dir: string, ring: Keyring): Promise<void> {
    const kek = ring.newest;
    const slots: SlotRecord[] = this.slots.map((slot) => ({
      slot,
      kek: kek.id,
      wrapped: wrapDek(kek.key, this.deks.get(slot)!, this.volumeId, slot).toString('base64'),
    }));
    const body = `${JSON.stringify({ format: FORMAT, volumeId: this.volumeId, current: this.current, slots })}\n`;
    const file = path.join(dir, keysName(this.volumeId));
    const tmp = `${file}.tmp`;
    const h = await fs.open(tmp, 'w');
    try {
      await writeFully(h, Buffer.from(body), 0);
      await h.sync();
    } finally {
      await h.close();
    }
    await fs.rename(tmp, file);
    await fsyncDir(dir);
    this.wrappedBy.clear();
    for (const s of slots) this.wrappedBy.set(s.slot, s.kek);
  }

  /** Ids of the KEKs that wrap this volume's saved slots on disk. */
  keksInUse(): Set<string> {
    const out = new Set<string>();
    for (const s of this.slots) {
      const k = this.wrappedBy.get(s);
      if (k !== undefined) out.add(k);
    }
    return out;
  }

  /** Whether some slot is wrapped by a KEK other than the newest (rotation pending). */
  needsRewrap(ring: Keyring): boolean {
    return this.slots.some((s) => this.wrappedBy.get(s) !== ring.newest.id);
  }
}

/** A fresh volume key set: slot 1 current (persist with `save`). */
export function newVolumeKeys(volumeId: number): VolumeKeys {
  return new VolumeKeys(volumeId, 1, new Map([[1, randomBytes(KEY_SIZE)]]), new Map());
}

function parseKeysFile(text: string, volumeId: number): { current: number; slots: SlotRecord[] } {
  const j = JSON.parse(text) as { format?: unknown; volumeId?: unknown; current?: unknown; slots?: unknown };
  const okSlot = (n: unknown): n is number =>
    Number.isInteger(n) && (n as number) >= 1 && (n as number) <= MAX_KEY_SLOT;
  if (j.format !== FORMAT || j.volumeId !== volumeId || !okSlot(j.current) || !Array.isArray(j.slots)) {
    throw new Error('unexpected format, volume id or current slot');
  }
  const slots: SlotRecord[] = [];
  for (const s of j.slots as Partial<SlotRecord>[]) {
    if (!okSlot(s.slot) || typeof s.kek !== 'string' || typeof s.wrapped !== 'string') {
      throw new Error('a slot entry is malformed');
    }
    slots.push({ slot: s.slot, kek: s.kek, wrapped: s.wrapped });
  }
  if (!slots.some((s) => s.slot === j.current)) throw new Error('the current slot has no key');
  return { current: j.current, slots };
}

/**
 * Reads and unwraps `<vid>.keys`; undefined when the volume has none (a
 * plaintext volume). KeyringError, naming KEK_FILE, when there is no keyring,
 * a slot's KEK is not in it, or a DEK does not unwrap (a wrong key).
 */
export async function loadVolumeKeys(
  dir: string,
  volumeId: number,
  ring: Keyring | undefined,
): Promise<VolumeKeys | undefined> {
  const file = path.join(dir, keysName(volumeId));
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  if (!ring) {
    throw new KeyringError(
      `volume ${volumeId} is encrypted (${file}) but no KEK_FILE is configured; set KEK_FILE to the file holding its key-encryption keys`,
    );
  }
  let parsed: ReturnType<typeof parseKeysFile>;
  try {
    parsed = parseKeysFile(text, volumeId);
  } catch (err) {
    throw new KeyringError(`${file} is damaged (${(err as Error).message}); its volume cannot be decrypted`);
  }
  const deks = new Map<number, Buffer>();
  const wrappedBy = new Map<number, string>();
  for (const s of parsed.slots) {
    const kek = ring.get(s.kek);
    if (!kek) {
      throw new KeyringError(
        `volume ${volumeId} key slot ${s.slot} is wrapped by KEK "${s.kek}", which KEK_FILE does not hold (keys: ${ring.keys.map((k) => k.id).join(', ')})`,
      );
    }
    const dek = unwrapDek(kek.key, Buffer.from(s.wrapped, 'base64'), volumeId, s.slot);
    if (!dek) {
      throw new KeyringError(
        `volume ${volumeId} key slot ${s.slot} does not unwrap with KEK "${s.kek}" from KEK_FILE: wrong key under that id, or ${file} is damaged`,
      );
    }
    deks.set(s.slot, dek);
    wrappedBy.set(s.slot, s.kek);
  }
  return new VolumeKeys(volumeId, parsed.current, deks, wrappedBy);
}

/**
 * Removes `<vid>.keys.tmp` leftovers of an interrupted save (the rename had not
 * happened, so `<vid>.keys` is the previous, complete version). A key file
 * without its volume is kept: deleting a key is never undone.
 */
export async function settleKeyFiles(dir: string): Promise<void> {
  for (const name of await fs.readdir(dir)) {
    if (/^\d+\.keys\.tmp$/.test(name)) await fs.rm(path.join(dir, name), { force: true });
  }
}
