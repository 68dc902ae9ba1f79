import { describe, expect, it } from 'vitest';
import { generateSigningKey } from '../../../internal/auth/keys.js';
import { AccessDenied } from '../../../internal/auth/scopes.js';
import { VerifiedTokens } from '../../../internal/auth/token-cache.js';
import { createToken } from '../../../internal/auth/token-sign.js';
import { TokenVerifier } from '../../../internal/auth/token-verify.js';

const grant = (subject: string) => ({ subject, scopes: new Set(['blob:read'] as const), prefix: '' });

describe('verified-token cache', async () => {
  const k1 = await generateSigningKey('k1');
  const k2 = await generateSigningKey('k2');
  const req = { scopes: new Set(['blob:read'] as const), prefix: '', ttlSec: 60, subject: 'alice' };

  it('a hit only inside [nbf, exp]; outside, the entry is dropped', () => {
    const c = new VerifiedTokens();
    c.set('t', grant('a'), 1_000, 2_000);
    expect(c.get('t', 999)).toBeUndefined();
    expect(c.size).toBe(0);
    c.set('t', grant('a'), 1_000, 2_000);
    expect(c.get('t', 1_500)?.subject).toBe('a');
    expect(c.get('t', 2_001)).toBeUndefined();
    expect(c.get('t', 1_500)).toBeUndefined();
  });

  it('is bounded: beyond max the least recently used goes', () => {
    const c = new VerifiedTokens(2);
    c.set('a', grant('a'), 0, 10);
    c.set('b', grant('b'), 0, 10);
    expect(c.get('a', 5)).toBeDefined(); // a is now the most recent
    c.set('c', grant('c'), 0, 10);
    expect(c.size).toBe(2);
    expect(c.get('b', 5)).toBeUndefined();
    expect(c.get('a', 5)?.subject).toBe('a');
    expect(c.get('c', 5)?.subject).toBe('c');
  });

  it('a cached grant cannot be changed by a caller', () => {
    const c = new VerifiedTokens();
    c.set('t', grant('a'), 0, 10);
    const g = c.get('t', 5) as { prefix: string };
    expect(() => {
      g.prefix = 'x';
    }).toThrow();
  });

  it('the verifier: a second verify of the same token gives the same grant; expiry still refuses', async () => {
    const v = new TokenVerifier({ keys: [k1.publicJwk] });
    const now = Date.now();
    const t = await createToken(k1.signing, { ...req, nowMs: now });
    const g1 = await v.verify(`Bearer ${t}`, now);
    const g2 = await v.verify(`Bearer ${t}`, now + 1000);
    expect(g2).toBe(g1);
    // 60 s ttl + 30 s tolerance: past it the cached entry no longer answers.
    const late = await v.verify(`Bearer ${t}`, now + 91_000).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(late).toBeInstanceOf(AccessDenied);
    expect((late as AccessDenied).message).toMatch(/expired at/);
  });

  it('a forged token never hits: another string is another token', async () => {
    const v = new TokenVerifier({ keys: [k1.publicJwk] });
    const t = await createToken(k1.signing, req);
    await v.verify(`Bearer ${t}`);
    const [h, p, s] = t.split('.');
    const claims = JSON.parse(Buffer.from(p ?? '', 'base64url').toString());
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...claims, scope: 'admin' })).toString('base64url')}.${s}`;
    await expect(v.verify(`Bearer ${forged}`)).rejects.toThrow(/signature/);
    // A verifier of other keys (a rotation that retired k1) does not know the token.
    const other = new TokenVerifier({ keys: [k2.publicJwk] });
    await expect(other.verify(`Bearer ${t}`)).rejects.toThrow(/not active/);
  });
});
