import { readFileSync } from 'node:fs';
import { exportJWK, generateKeyPair, type JWK } from 'jose';

/** Tokens are ES256 (ECDSA P-256, RFC 7518 §3.4): Envoy's jwt_authn and jose both verify it. */
export const TOKEN_ALG = 'ES256';
/** `iss` and `aud` of every Haystack token. */
export const TOKEN_ISSUER = 'haystack';
export const TOKEN_AUDIENCE = 'haystack';
/** More than this many keys in a JWKS is a mistake (rotation needs two). */
export const MAX_ACTIVE_KEYS = 4;

/** A public JSON Web Key Set (RFC 7517 §5). */
export interface Jwks {
  keys: JWK[];
}

/** A signing key: a private JWK with its `kid`. */
export interface SigningKey {
  kid: string;
  privateJwk: JWK;
}

const KID = /^[A-Za-z0-9._-]{1,64}$/;

/** A new ES256 key pair named `kid`: the private JWK (keep secret) and the public one (for the JWKS). */
export async function generateSigningKey(kid: string): Promise<{ signing: SigningKey; publicJwk: JWK }> {
  if (!KID.test(kid)) throw new Error(`key id "${kid}": expected 1-64 characters [A-Za-z0-9._-]`);
  const { publicKey, privateKey } = await generateKeyPair(TOKEN_ALG, { extractable: true });
  const meta = { kid, alg: TOKEN_ALG, use: 'sig' };
  return {
    signing: { kid, privateJwk: { ...(await exportJWK(privateKey)), ...meta } },
    publicJwk: { ...(await exportJWK(publicKey)), ...meta },
  };
}

/**
 * Checks a JWKS of verification keys: 1..MAX_ACTIVE_KEYS EC P-256 public keys, each with a
 * distinct `kid`, none carrying a private part (`d`).
 * @throws Error saying what is wrong.
 */
export function parseJwks(text: string): Jwks {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error('not JSON: expected a JWKS {"keys": [...]}');
  }
  const keys = (v as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.length === 0)
    throw new Error('expected a JWKS {"keys": [...]} with a key');
  if (keys.length > MAX_ACTIVE_KEYS) throw new Error(`${keys.length} keys; at most ${MAX_ACTIVE_KEYS}`);
  const seen = new Set<string>();
  for (const k of keys as JWK[]) {
    if (k === null || typeof k !== 'object') throw new Error('a key is not an object');
    if (typeof k.kid !== 'string' || !KID.test(k.kid))
      throw new Error('every key needs a kid of [A-Za-z0-9._-]');
    if (seen.has(k.kid)) throw new Error(`kid ${k.kid} appears twice`);
    seen.add(k.kid);
    if (k.kty !== 'EC' || k.crv !== 'P-256')
      throw new Error(`key ${k.kid}: expected kty EC, crv P-256 (ES256)`);
    if ('d' in k) throw new Error(`key ${k.kid} holds a private key: the JWKS must hold public keys only`);
  }
  return { keys: keys as JWK[] };
}

/** Reads and checks a JWKS file. @throws Error naming the file. */
export function readJwksFile(file: string): Jwks {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    return parseJwks(text);
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`);
  }
}

/** Reads a private signing JWK file (what `haystack token keygen` writes). @throws Error naming the file. */
export function readSigningKeyFile(file: string): SigningKey {
  let k: JWK;
  try {
    k = JSON.parse(readFileSync(file, 'utf8')) as JWK;
  } catch (err) {
    throw new Error(`cannot read the signing key ${file}: ${(err as Error).message}`);
  }
  if (k?.kty !== 'EC' || k.crv !== 'P-256' || typeof k.d !== 'string' || typeof k.kid !== 'string') {
    throw new Error(`${file}: expected a private EC P-256 JWK with a kid (haystack token keygen writes one)`);
  }
  return { kid: k.kid, privateJwk: k };
}
