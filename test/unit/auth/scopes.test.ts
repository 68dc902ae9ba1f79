import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { contentIdProblem } from '../../../internal/auth/content-id.js';
import {
  AccessDenied,
  type Grant,
  listPrefix,
  parseScopes,
  requireScope,
  SCOPES,
  type Scope,
} from '../../../internal/auth/scopes.js';

const grant = (scopes: Scope[], prefix = ''): Grant => ({ subject: 't', scopes: new Set(scopes), prefix });
const idChar = fc.constantFrom(...'abcXYZ019._~-'.split(''));
const id = fc.string({ unit: idChar, minLength: 1, maxLength: 20 });

function denied(fn: () => unknown): AccessDenied | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof AccessDenied) return err;
    throw err;
  }
  return undefined;
}

describe('scopes', () => {
  it('parses space- or comma-separated scopes and refuses unknown ones', () => {
    expect([...parseScopes('blob:read blob:write,admin')]).toEqual(['blob:read', 'blob:write', 'admin']);
    expect(() => parseScopes('blob:read root')).toThrow(/unknown scope "root"/);
  });

  it('a grant allows exactly its scopes, admin allows all; denials are PERMISSION_DENIED naming the scope', () => {
    fc.assert(
      fc.property(fc.subarray([...SCOPES]), fc.constantFrom(...SCOPES), id, (have, need, blobId) => {
        const e = denied(() => requireScope(grant(have), need, blobId));
        const allowed = have.includes(need) || have.includes('admin');
        expect(e === undefined).toBe(allowed);
        if (e) {
          expect(e.kind).toBe('permission_denied');
          expect(e.message).toContain(need);
          expect(e.bearerError).toBe('insufficient_scope');
        }
      }),
    );
  });

  it('a prefix grant reaches exactly the ids that start with the prefix', () => {
    fc.assert(
      fc.property(id, id, (prefix, blobId) => {
        const e = denied(() => requireScope(grant(['blob:read'], prefix), 'blob:read', blobId));
        expect(e === undefined).toBe(blobId.startsWith(prefix));
      }),
    );
    expect(denied(() => requireScope(grant(['blob:write'], 'u1-'), 'blob:write', ''))?.message).toMatch(
      /name the blob id/,
    );
  });

  it('List stays inside the prefix: empty asks for the prefix, anything outside is refused', () => {
    const g = grant(['blob:list'], 'u1-');
    expect(listPrefix(g, '')).toBe('u1-');
    expect(listPrefix(g, 'u1-photos')).toBe('u1-photos');
    expect(denied(() => listPrefix(g, 'u2-'))?.kind).toBe('permission_denied');
    expect(denied(() => listPrefix(g, 'u'))?.kind).toBe('permission_denied');
    expect(denied(() => listPrefix(grant(['blob:read']), ''))?.message).toMatch(/blob:list/);
  });
});

describe('content ids', () => {
  const sha = 'a'.repeat(64);
  it('a 64-hex id must be the lower-case SHA-256 of the data; other ids are free', () => {
    expect(contentIdProblem(sha, sha)).toBeNull();
    expect(contentIdProblem(sha, 'b'.repeat(64))).toMatch(/looks like a SHA-256 content address/);
    expect(contentIdProblem(sha.toUpperCase(), sha)).toMatch(/lower-case/);
    fc.assert(
      fc.property(id, fc.stringMatching(/^[0-9a-f]{64}$/), (blobId, digest) => {
        fc.pre(!/^[0-9a-fA-F]{64}$/.test(blobId));
        expect(contentIdProblem(blobId, digest)).toBeNull();
      }),
    );
  });
});
