/**
 * Per-needle AES-256-GCM (NIST SP 800-38D) with node:crypto, streaming: the
 * data is sealed and opened chunk by chunk (GCM is a counter mode: ciphertext
 * is as long as the plaintext and produced as it arrives), the 128-bit tag
 * comes at the end and goes in the footer. Memory stays one chunk per needle.
 *
 * - Nonce: 96 random bits per needle (§8.2.2). A DEK seals at most one
 *   volume's needles (a few million at 4 GiB volumes), far below the 2^32
 *   invocations §8.3 allows for random nonces; compaction moves to a new DEK.
 * - Authenticated data: the needle's header, key and meta bytes exactly as
 *   written to disk (`encodeHeader`), so the tag binds the blob id, cookie, key
 *   slot, flags, size, stamp, content type and file name: ciphertext moved under
 *   another needle's header, or a header edited, fails to open.
 */
import { createCipheriv, createDecipheriv, type DecipherGCM, randomFillSync } from 'node:crypto';
import { encodeHeader, type NeedleHeader, NONCE_SIZE, TAG_SIZE } from '../needle.js';

/** The authenticated data of a needle: its header + key + meta bytes as on disk. */
export function needleAad(h: NeedleHeader): Uint8Array {
  return encodeHeader(h);
}

/** Nonces drawn per CSPRNG call: one `randomFillSync` per 256 needles instead of one each. */
const NONCES_PER_BATCH = 256;
let nonceBatch = new Uint8Array(0);
let nonceAt = 0;

/**
 * A fresh random 96-bit nonce. Batched because `randomBytes(12)` per needle cost
 * ~3 µs of a ~50 µs seal (profile of 64 KiB writes); each batch is a new buffer,
 * never refilled, so a nonce handed out stays unchanged while its needle streams.
 */
export function freshNonce(): Uint8Array {
  if (nonceAt === nonceBatch.length) {
    nonceBatch = randomFillSync(new Uint8Array(NONCE_SIZE * NONCES_PER_BATCH));
    nonceAt = 0;
  }
  nonceAt += NONCE_SIZE;
  return nonceBatch.subarray(nonceAt - NONCE_SIZE, nonceAt);
}

/** Seals one needle's data, chunk by chunk, then yields the tag. */
export class NeedleSealer {
  readonly nonce = freshNonce();
  private readonly cipher;

  /** `aad`: the needle's header bytes (`needleAad` / what beginWrite writes). */
  constructor(dek: Uint8Array, aad: Uint8Array) {
    this.cipher = createCipheriv('aes-256-gcm', dek, this.nonce, { authTagLength: TAG_SIZE });
    this.cipher.setAAD(aad);
  }

  /**
   * Ciphertext of `chunk`: same length, at the same position of the data. A
   * fresh buffer each call, the caller's to keep (store-write.ts holds a small
   * needle's pieces until commit instead of copying them).
   */
  update(chunk: Uint8Array): Uint8Array {
    const out = this.cipher.update(chunk);
    if (out.length !== chunk.length) throw new Error('AES-GCM returned a ciphertext of another length');
    return out;
  }

  /** Ends the needle; the 16-byte tag for the footer. */
  final(): Uint8Array {
    this.cipher.final();
    return this.cipher.getAuthTag();
  }
}

/**
 * Opens one needle's data chunk by chunk. Plaintext from `update` is NOT yet
 * authenticated: callers hold back what they emit until `final` returned
 * (it throws when the tag does not match).
 */
export class NeedleOpener {
  private readonly decipher: DecipherGCM;

  constructor(dek: Uint8Array, aad: Uint8Array, nonce: Uint8Array, tag: Uint8Array) {
    this.decipher = createDecipheriv('aes-256-gcm', dek, nonce, { authTagLength: TAG_SIZE });
    this.decipher.setAAD(aad);
    this.decipher.setAuthTag(tag);
  }

  update(chunk: Uint8Array): Uint8Array {
    const out = this.decipher.update(chunk);
    if (out.length !== chunk.length) throw new Error('AES-GCM returned a plaintext of another length');
    return out;
  }

  /** True when the tag matched (every byte, the header and the key were authentic). */
  final(): boolean {
    try {
      this.decipher.final();
      return true;
    } catch {
      return false;
    }
  }
}
