import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Code, ConnectError, type Interceptor, type Transport } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import { generateSigningKey, type SigningKey } from '../../internal/auth/keys.js';
import { parseScopes } from '../../internal/auth/scopes.js';
import { createToken } from '../../internal/auth/token-sign.js';
import { tmpName } from './tools.js';

/**
 * The test suite's token keys (issue 13): one signing key per test file, its JWKS on disk for
 * the gateways (AUTH_JWKS_FILE, see tools.ts spawnServer) and one signed-URL key. Every
 * gateway a test starts verifies tokens against it; the setup file puts an admin token in
 * HAYSTACK_TOKEN, so the SDK and CLI the tests run carry it.
 */
interface TestKeys {
  signing: SigningKey;
  jwksFile: string;
  urlKey: string;
  dir: string;
}

let keys: Promise<TestKeys> | undefined;

function theKeys(): Promise<TestKeys> {
  keys ??= (async () => {
    const dir = tmpName('auth');
    mkdirSync(dir, { recursive: true });
    const { signing, publicJwk } = await generateSigningKey('test-1');
    const jwksFile = path.join(dir, 'jwks.json');
    writeFileSync(jwksFile, JSON.stringify({ keys: [publicJwk] }));
    writeFileSync(path.join(dir, 'signing-key.json'), JSON.stringify(signing.privateJwk), { mode: 0o600 });
    return { signing, jwksFile, urlKey: randomBytes(32).toString('hex'), dir };
  })();
  return keys;
}

/** AUTH_JWKS_FILE and URL_SIGNING_KEYS of a test gateway. */
export async function testAuthEnv(): Promise<Record<string, string>> {
  const k = await theKeys();
  return { AUTH_JWKS_FILE: k.jwksFile, URL_SIGNING_KEYS: k.urlKey };
}

/** The private signing key file (for `haystack token create --key`). */
export async function testSigningKeyFile(): Promise<string> {
  return path.join((await theKeys()).dir, 'signing-key.json');
}

/** A token of the test key: scopes (space- or comma-separated), optional prefix, ttl and subject. */
export async function testToken(
  scopes: string,
  opts: { prefix?: string; ttlSec?: number; nowMs?: number; subject?: string } = {},
) {
  return createToken((await theKeys()).signing, {
    scopes: parseScopes(scopes),
    prefix: opts.prefix ?? '',
    ttlSec: opts.ttlSec ?? 3600,
    subject: opts.subject ?? 'test',
    ...(opts.nowMs !== undefined ? { nowMs: opts.nowMs } : {}),
  });
}

/** `authorization: Bearer <admin token>` for raw HTTP calls through Envoy. */
export async function adminAuthHeader(): Promise<{ authorization: string }> {
  return {
    authorization: `Bearer ${process.env.HAYSTACK_TOKEN ?? (await testToken('admin', { ttlSec: 86_400 }))}`,
  };
}

/**
 * fetch with the suite's admin token (HAYSTACK_TOKEN, setup-token.ts) unless the request sets
 * its own authorization: for tests of HTTP behaviour through Envoy, not of access control.
 */
export const authFetch: typeof fetch = (input, init = {}) =>
  fetch(input, {
    ...init,
    headers: {
      authorization: `Bearer ${process.env.HAYSTACK_TOKEN ?? ''}`,
      ...(init.headers as Record<string, string> | undefined),
    },
  });

/** A connect interceptor adding the suite's admin token: for transports a test builds itself. */
export const authInterceptor: Interceptor = (next) => (req) => {
  if (!req.header.has('authorization'))
    req.header.set('authorization', `Bearer ${process.env.HAYSTACK_TOKEN ?? ''}`);
  return next(req);
};

/** The gRPC code name and raw message of a call ('OK' when it succeeded); SDK errors included. */
export async function codeOf(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
    return { code: 'OK', message: '' };
  } catch (e) {
    // SDK errors (HaystackError) carry the code too.
    const code = (e as { code?: unknown }).code;
    const ce =
      e instanceof ConnectError || typeof code !== 'number'
        ? ConnectError.from(e)
        : new ConnectError((e as Error).message, code);
    return { code: Code[ce.code] ?? String(e), message: ce.rawMessage };
  }
}

/** A plaintext gRPC transport to `url` (Envoy's public port) sending `token` ('' sends none). */
export function tokenTransport(url: string, token: string): Transport {
  return createGrpcTransport({
    baseUrl: url,
    interceptors: [
      (next) => (req) => {
        if (token) req.header.set('authorization', `Bearer ${token}`);
        return next(req);
      },
    ],
  });
}
