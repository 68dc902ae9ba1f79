import { writeFileSync } from 'node:fs';
import { importJWK, SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { generateSigningKey, parseJwks, readJwksFile } from '../../../internal/auth/keys.js';
import { AccessDenied } from '../../../internal/auth/scopes.js';
import { createToken } from '../../../internal/auth/token-sign.js';
import { bearerToken, TokenVerifier } from '../../../internal/auth/token-verify.js';
import { tmpName } from '../../helpers/tools.js';

async function refusal(p: Promise<unknown>): Promise<AccessDenied> {
  try {
    await p;
  } catch (err) {
    if (err instanceof AccessDenied) return err;
    throw err;
  }
  throw new Error('expected a refusal');
}

describe('tokens', async () => {
  const k1 = await generateSigningKey('k1');
  const k2 = await generateSigningKey('k2');
  const both = new TokenVerifier({ keys: [k1.publicJwk, k2.publicJwk] });
  const onlyK2 = new TokenVerifier({ keys: [k2.publicJwk] });
  const req = {
    scopes: new Set(['blob:read', 'blob:list'] as const),
    prefix: 'u1-',
    ttlSec: 60,
    subject: 'alice',
  };

  it('a created token verifies to its scopes, prefix and subject', async () => {
    const t = await createToken(k1.signing, req);
    const g = await both.verify(`Bearer ${t}`);
    expect([...g.scopes]).toEqual(['blob:read', 'blob:list']);
    expect(g.prefix).toBe('u1-');
    expect(g.subject).toBe('alice');
  });

  it('rotation: both active keys verify; a retired key is refused as not active', async () => {
    const t1 = await createToken(k1.signing, req);
    const t2 = await createToken(k2.signing, req);
    await expect(both.verify(`Bearer ${t2}`)).resolves.toBeDefined();
    await expect(onlyK2.verify(`Bearer ${t2}`)).resolves.toBeDefined();
    const e = await refusal(onlyK2.verify(`Bearer ${t1}`));
    expect(e.kind).toBe('unauthenticated');
    expect(e.message).toMatch(/not active/);
  });

  it('missing, malformed, expired, forged and foreign tokens are UNAUTHENTICATED with a reason', async () => {
    expect((await refusal(both.verify(undefined))).message).toMatch(
      /missing token: send Authorization: Bearer/,
    );
    expect((await refusal(both.verify('Basic abc'))).bearerError).toBe('invalid_token');
    const old = await createToken(k1.signing, { ...req, nowMs: Date.now() - 3_600_000 });
    expect((await refusal(both.verify(`Bearer ${old}`))).message).toMatch(/expired at/);
    const t = await createToken(k1.signing, req);
    const [h, p, s] = t.split('.');
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p ?? '', 'base64url').toString()), scope: 'admin' })).toString('base64url')}.${s}`;
    expect((await refusal(both.verify(`Bearer ${forged}`))).message).toMatch(/signature/);
    // Signed by an active key but for another audience, or without exp: refused.
    const key = await importJWK(k1.signing.privateJwk, 'ES256');
    const foreign = await new SignJWT({ scope: 'admin' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer('haystack')
      .setAudience('elsewhere')
      .setExpirationTime('1h')
      .sign(key);
    expect((await refusal(both.verify(`Bearer ${foreign}`))).message).toMatch(/aud/);
    const forever = await new SignJWT({ scope: 'admin' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer('haystack')
      .setAudience('haystack')
      .sign(key);
    expect((await refusal(both.verify(`Bearer ${forever}`))).message).toMatch(/exp/);
    const badScope = await new SignJWT({ scope: 'blob:read root' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer('haystack')
      .setAudience('haystack')
      .setExpirationTime('1h')
      .sign(key);
    expect((await refusal(both.verify(`Bearer ${badScope}`))).message).toMatch(/unknown scope/);
  });

  it('bearerToken reads RFC 6750 headers only', () => {
    expect(bearerToken('Bearer abc.def-_~+/=')).toBe('abc.def-_~+/=');
    expect(bearerToken('bearer  x')).toBe('x');
    expect(bearerToken(undefined)).toBe('');
    expect(() => bearerToken('Bearer a b')).toThrow(AccessDenied);
  });

  it('createToken refuses no scope, a bad prefix and out-of-range ttls', async () => {
    await expect(createToken(k1.signing, { ...req, scopes: new Set() })).rejects.toThrow(
      /at least one scope/,
    );
    await expect(createToken(k1.signing, { ...req, prefix: 'a/b' })).rejects.toThrow(/prefix/);
    await expect(createToken(k1.signing, { ...req, ttlSec: 0 })).rejects.toThrow(/ttl/);
    await expect(createToken(k1.signing, { ...req, ttlSec: 10 ** 9 })).rejects.toThrow(/ttl/);
  });

  it('a JWKS must hold 1-4 distinct public P-256 keys', () => {
    expect(() => parseJwks('{}')).toThrow(/JWKS/);
    expect(() => parseJwks(JSON.stringify({ keys: [k1.signing.privateJwk] }))).toThrow(/private/);
    expect(() => parseJwks(JSON.stringify({ keys: [k1.publicJwk, k1.publicJwk] }))).toThrow(/twice/);
    const f = tmpName('jwks');
    writeFileSync(f, JSON.stringify({ keys: [k1.publicJwk, k2.publicJwk] }));
    expect(readJwksFile(f).keys.map((k) => k.kid)).toEqual(['k1', 'k2']);
  });
});
