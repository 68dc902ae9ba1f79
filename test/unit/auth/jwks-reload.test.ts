import { renameSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { JwksFile } from '../../../internal/auth/jwks-reload.js';
import { generateSigningKey } from '../../../internal/auth/keys.js';
import { parseScopes } from '../../../internal/auth/scopes.js';
import { createToken } from '../../../internal/auth/token-sign.js';
import { TokenVerifier } from '../../../internal/auth/token-verify.js';
import { tmpName } from '../../helpers/tools.js';

/** Replaces the file in one step, as a Secret update or an editor's save does. */
function replace(file: string, text: string): void {
  writeFileSync(`${file}.new`, text);
  renameSync(`${file}.new`, file);
}

describe('AUTH_JWKS_FILE reload (key rotation without a restart)', () => {
  it('a key added is used, a key removed is refused, an invalid file keeps the last good keys', async () => {
    const k1 = await generateSigningKey('k1');
    const k2 = await generateSigningKey('k2');
    const file = tmpName('jwks');
    replace(file, JSON.stringify({ keys: [k1.publicJwk] }));
    const jwks = new JwksFile(file, { keys: [k1.publicJwk] });
    const verifier = new TokenVerifier(jwks.current);
    const token = (k: typeof k1) =>
      createToken(k.signing, { scopes: parseScopes('blob:read'), prefix: '', ttlSec: 60, subject: 's' });
    const verdict = (t: string) =>
      verifier.verify(`Bearer ${t}`).then(
        () => 'ok',
        (e: Error) => e.message,
      );
    const apply = async () => {
      const r = await jwks.reload();
      if (r?.kind === 'changed') verifier.use(r.jwks);
      return r;
    };

    expect(await apply()).toBeUndefined(); // the same keys as at start
    expect(await verdict(await token(k2))).toMatch(/not active/);

    replace(file, JSON.stringify({ keys: [k1.publicJwk, k2.publicJwk] }));
    expect(await apply()).toMatchObject({ kind: 'changed', kids: ['k1', 'k2'] });
    expect(await verdict(await token(k2))).toBe('ok');
    expect(await verdict(await token(k1))).toBe('ok');

    // A broken file (half-written, a private key by mistake) changes nothing, and is said once.
    replace(file, JSON.stringify({ keys: [k2.signing.privateJwk] }));
    expect(await apply()).toMatchObject({ kind: 'invalid', why: expect.stringMatching(/private/) });
    expect(await apply()).toBeUndefined();
    expect(jwks.current.keys.map((k) => k.kid)).toEqual(['k1', 'k2']);
    replace(file, '{"keys": [');
    expect(await apply()).toMatchObject({ kind: 'invalid', why: expect.stringMatching(/not JSON/) });
    expect(await verdict(await token(k1))).toBe('ok');

    // A token verified (and so cached) under k1 is refused too once k1 is removed.
    const kept = await token(k1);
    expect(await verdict(kept)).toBe('ok');
    replace(file, JSON.stringify({ keys: [k2.publicJwk] }));
    expect(await apply()).toMatchObject({ kind: 'changed', kids: ['k2'] });
    expect(await verdict(kept)).toMatch(/not active/);
    expect(await verdict(await token(k1))).toMatch(/not active/);
    expect(await verdict(await token(k2))).toBe('ok');
  });
});
