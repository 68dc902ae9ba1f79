import { readFileSync } from 'node:fs';
import type { DescService } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { describe, expect, it } from 'vitest';
import { Health } from '../../../gen/grpc/health/v1/health_pb.js';
import { ServerReflection as ReflectionV1 } from '../../../gen/grpc/reflection/v1/reflection_pb.js';
import { ServerReflection as ReflectionV1alpha } from '../../../gen/grpc/reflection/v1alpha/reflection_pb.js';
import { BlobService } from '../../../gen/haystack/v1/blob_pb.js';
import { DirectoryService } from '../../../gen/haystack/v1/directory_pb.js';
import { ReplicationService } from '../../../gen/haystack/v1/replication_pb.js';
import { StoreService } from '../../../gen/haystack/v1/store_pb.js';
import { authorize, METHOD_ROLES, methodKey } from '../../../internal/security/authz.js';
import { ROLES } from '../../../internal/security/identity.js';

const SERVED: readonly DescService[] = [
  BlobService,
  StoreService,
  DirectoryService,
  ReplicationService,
  Health,
  ReflectionV1,
  ReflectionV1alpha,
];
const methods = SERVED.flatMap((s) => s.methods);

/** docs/security.md's role table: `| \`service/Method\` | role, role |` rows ("any identity" = every role). */
function docsTable(): Record<string, string[]> {
  const md = readFileSync(new URL('../../../docs/security.md', import.meta.url), 'utf8');
  const rows: Record<string, string[]> = {};
  for (const m of md.matchAll(/^\| `([\w.]+\/\w+)`\s*\|\s*([^|]+?)\s*\|$/gm)) {
    const roles = m[2] === 'any identity' ? [...ROLES] : (m[2] as string).split(/,\s*/);
    rows[m[1] as string] = roles.sort();
  }
  return rows;
}

describe('the role table (internal/security/authz.ts)', () => {
  it('names every method the servers serve, and no other', () => {
    const served = methods.map(methodKey).sort();
    expect(Object.keys(METHOD_ROLES).sort()).toEqual(served);
  });

  it('is the table docs/security.md shows', () => {
    const code = Object.fromEntries(Object.entries(METHOD_ROLES).map(([k, v]) => [k, [...v].sort()]));
    expect(docsTable()).toEqual(code);
  });

  it('refuses a caller without a certificate UNAUTHENTICATED and a role it does not list PERMISSION_DENIED, on every method', () => {
    const codeOf = (f: () => void): Code | 'ok' => {
      try {
        f();
        return 'ok';
      } catch (e) {
        return ConnectError.from(e).code;
      }
    };
    for (const m of methods) {
      const allowed = METHOD_ROLES[methodKey(m)] ?? [];
      expect(
        codeOf(() => authorize(m, { transport: 'mtls', identity: undefined, directoryPeerIds: [] })),
      ).toBe(Code.Unauthenticated);
      for (const role of ROLES) {
        const got = codeOf(() =>
          authorize(m, { transport: 'mtls', identity: { role, id: `${role}-0` }, directoryPeerIds: [] }),
        );
        expect(got, `${role} on ${methodKey(m)}`).toBe(allowed.includes(role) ? 'ok' : Code.PermissionDenied);
      }
    }
  });
});
