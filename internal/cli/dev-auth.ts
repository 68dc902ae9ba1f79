import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { generateSigningKey } from '../auth/keys.js';
import { createToken } from '../auth/token-sign.js';

/** Lifetime of the admin token `haystack dev` prints. */
const DEV_TOKEN_TTL_SEC = 12 * 3600;

export interface DevAuth {
  /** AUTH_JWKS_FILE and URL_SIGNING_KEYS of every dev gateway. */
  gatewayEnv: Record<string, string>;
  /** The private signing key (for `haystack token create`). */
  signingKeyFile: string;
  /** An admin token valid DEV_TOKEN_TTL_SEC. */
  adminToken: string;
}

/**
 * Token keys of one `haystack dev` run, under <data>/auth: a fresh ES256 signing key (kid
 * dev-<time>) and its JWKS, a signed-URL key, and an admin token to print. A restart rotates
 * them all (old tokens and URLs stop working), as it does the dev CA.
 */
export async function devAuth(dir: string): Promise<DevAuth> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const { signing, publicJwk } = await generateSigningKey(`dev-${Date.now()}`);
  const signingKeyFile = path.join(dir, 'signing-key.json');
  const jwksFile = path.join(dir, 'jwks.json');
  await writeFile(signingKeyFile, `${JSON.stringify(signing.privateJwk)}\n`, { mode: 0o600 });
  await writeFile(jwksFile, `${JSON.stringify({ keys: [publicJwk] }, null, 2)}\n`);
  const adminToken = await createToken(signing, {
    scopes: new Set(['admin']),
    prefix: '',
    ttlSec: DEV_TOKEN_TTL_SEC,
    subject: 'dev-admin',
  });
  return {
    gatewayEnv: { AUTH_JWKS_FILE: jwksFile, URL_SIGNING_KEYS: randomBytes(32).toString('hex') },
    signingKeyFile,
    adminToken,
  };
}
