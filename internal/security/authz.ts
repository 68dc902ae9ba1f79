import type { DescMethod } from '@bufbuild/protobuf';
import { Code, ConnectError, type HandlerContext, type Interceptor } from '@connectrpc/connect';
import { type Caller, callerKey, describeIdentity, type Identity, ROLES, type Role } from './identity.js';

/**
 * Who may call what: one table, method → roles, enforced for every call on both
 * server paths (connect-node through `authzInterceptor`, the direct gRPC path
 * through `authorizeCall`). A method missing from the table is refused to
 * everyone (deny by default). The table is the one in docs/security.md.
 */
const ANY: readonly Role[] = ROLES;
const INTERNAL_READERS: readonly Role[] = ['gateway', 'store', 'replication', 'directory', 'admin'];

export const METHOD_ROLES: Readonly<Record<string, readonly Role[]>> = {
  // Public API: Envoy carries end users' calls (their auth is issue 13); operators directly.
  'haystack.v1.BlobService/Upload': ['envoy', 'admin'],
  'haystack.v1.BlobService/Put': ['envoy', 'admin'],
  'haystack.v1.BlobService/Download': ['envoy', 'admin'],
  'haystack.v1.BlobService/Delete': ['envoy', 'admin'],
  'haystack.v1.BlobService/Stat': ['envoy', 'admin'],
  'haystack.v1.BlobService/List': ['envoy', 'admin'],
  'haystack.v1.BlobService/GetStats': ['envoy', 'admin'],
  'haystack.v1.BlobService/CreateSignedUrl': ['envoy', 'admin'],

  // Stores: blob bytes move gateway → store → store; deletes come with a fencing term
  // (a gateway's is the directory leader's it follows, the manager's its lease's).
  // The manager writes cold stubs (Write with `cold`, its lease term; docs/design/ec-tier.md).
  'haystack.v1.StoreService/Write': ['gateway', 'store', 'replication'],
  // A store forwarding small writes to the other replicas (forward_to) on one stream per replica.
  'haystack.v1.StoreService/ForwardWrites': ['store'],
  'haystack.v1.StoreService/Read': ['gateway', 'store', 'replication', 'admin'],
  'haystack.v1.StoreService/Stat': ['gateway', 'store', 'replication', 'admin'],
  'haystack.v1.StoreService/Delete': ['gateway', 'replication'],
  'haystack.v1.StoreService/Replicate': ['replication'],
  'haystack.v1.StoreService/Compact': ['replication', 'admin'],
  'haystack.v1.StoreService/Scrub': ['replication', 'admin'],
  'haystack.v1.StoreService/GetStats': INTERNAL_READERS,
  'haystack.v1.StoreService/ListNeedles': ['replication', 'admin'],
  'haystack.v1.StoreService/ListPlacementGroup': ['gateway', 'replication', 'store', 'admin'],
  'haystack.v1.StoreService/GetPlacementDigests': ['replication', 'store', 'admin'],
  // Erasure-coded shards (docs/design/ec-tier.md): the manager encodes, repairs and
  // drops them with its lease term; gateways and the manager read them.
  'haystack.v1.StoreService/WriteShard': ['replication'],
  'haystack.v1.StoreService/ReadShard': ['gateway', 'replication', 'admin'],
  'haystack.v1.StoreService/DeleteShard': ['replication'],
  // KEK rotation (`haystack keys rewrap`): operators only.
  'haystack.v1.StoreService/RewrapKeys': ['admin'],
  // Orphan shard collection (internal/replication/shard-gc.ts) and operators.
  'haystack.v1.StoreService/ListShards': ['replication', 'admin'],

  // Directory: writes from gateways (and followers forwarding to the leader).
  'haystack.v1.DirectoryService/AllocateWrite': ['gateway', 'directory'],
  'haystack.v1.DirectoryService/CommitWrite': ['gateway', 'directory'],
  'haystack.v1.DirectoryService/Delete': ['gateway', 'directory'],
  'haystack.v1.DirectoryService/Locate': ['gateway', 'envoy', 'replication', 'directory', 'admin'],
  'haystack.v1.DirectoryService/List': ['gateway', 'envoy', 'replication', 'directory', 'admin'],
  'haystack.v1.DirectoryService/VerifyBlobs': ['replication', 'directory'],
  'haystack.v1.DirectoryService/UpdateReplicas': ['replication', 'directory'],
  'haystack.v1.DirectoryService/UpdatePlacement': ['replication', 'directory'],
  // Operators' placement verbs (`haystack drain`, `haystack balance`); a follower
  // forwards them to the leader as itself.
  'haystack.v1.DirectoryService/DrainStore': ['admin', 'directory'],
  'haystack.v1.DirectoryService/BalancePlacement': ['admin', 'directory'],
  // Further checked in the handler: a store heartbeats only as itself.
  'haystack.v1.DirectoryService/Heartbeat': ['store'],
  // include_uncommitted further requires a configured directory peer.
  'haystack.v1.DirectoryService/WatchMetadata': ['gateway', 'replication', 'directory'],
  // Peer RPCs of the metadata log: configured directory peers only (checked in the handler too).
  'haystack.v1.DirectoryService/AckMetadata': ['directory'],
  'haystack.v1.DirectoryService/GetLogState': ['directory'],
  'haystack.v1.DirectoryService/GetClusterStatus': ANY,

  // Replication manager: reports from stores and gateways; reads for the dashboard and operators.
  'haystack.v1.ReplicationService/ReportAccess': ['store', 'gateway'],
  'haystack.v1.ReplicationService/ReportCorruption': ['store', 'gateway', 'replication'],
  'haystack.v1.ReplicationService/GetBlobStatus': ['envoy', 'admin', 'replication'],
  'haystack.v1.ReplicationService/GetStats': ['store', 'gateway', 'envoy', 'admin', 'replication'],
  'haystack.v1.ReplicationService/ListTasks': ['envoy', 'admin', 'replication'],
  'haystack.v1.ReplicationService/RunAudit': ['admin'],

  // Health and reflection: any authenticated identity (Envoy's health checks, grpcurl).
  'grpc.health.v1.Health/Check': ANY,
  'grpc.health.v1.Health/Watch': ANY,
  'grpc.reflection.v1.ServerReflection/ServerReflectionInfo': ANY,
  'grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo': ANY,
};

export function methodKey(method: DescMethod): string {
  return `${method.parent.typeName}/${method.name}`;
}

/**
 * Checks one call: UNAUTHENTICATED without a verified identity, PERMISSION_DENIED
 * for a role the table does not list. Plaintext mode checks nothing.
 */
export function authorize(method: DescMethod, caller: Caller | undefined): void {
  if (!caller || caller.transport === 'plaintext') return;
  const key = methodKey(method);
  if (!caller.identity) {
    throw new ConnectError(
      `${key} requires a client certificate signed by the cluster CA (mTLS)`,
      Code.Unauthenticated,
    );
  }
  const roles = METHOD_ROLES[key];
  if (!roles?.includes(caller.identity.role)) {
    throw new ConnectError(
      `${describeIdentity(caller.identity)} may not call ${key}${roles ? ` (allowed: ${roles.join(', ')})` : ''}`,
      Code.PermissionDenied,
    );
  }
}

/** The table as a connect interceptor (connect-node's server path). */
export function authzInterceptor(): Interceptor {
  return (next) => async (req) => {
    authorize(req.method, req.contextValues.get(callerKey));
    return next(req);
  };
}

/** The direct gRPC path's hook: the same check against the call's context. */
export function authorizeCall(method: DescMethod, ctx: HandlerContext): void {
  authorize(method, ctx.values.get(callerKey));
}

/** The caller's verified identity in a handler; undefined in plaintext mode or in-process. */
export function callerIdentity(ctx: HandlerContext): Identity | undefined {
  const c = ctx.values.get(callerKey);
  return c?.transport === 'mtls' ? c.identity : undefined;
}

/** True when identities are checked for this call (mTLS). */
export function isAuthenticatedTransport(ctx: HandlerContext): boolean {
  return ctx.values.get(callerKey)?.transport === 'mtls';
}

/** Plain HTTP paths any TLS client may GET without a certificate: probes and Prometheus scrapes. */
const OPEN_HTTP_PATHS = new Set(['/healthz', '/metrics']);
/** Who may use the other plain HTTP routes (/blobs/{id}, /ui/): Envoy for end users, operators. */
const HTTP_ROLES: readonly Role[] = ['envoy', 'admin'];

/**
 * The role check for plain HTTP routes (RFC 9110 statuses): 401 without a
 * verified identity, 403 for a role not allowed; undefined when allowed.
 */
export function authorizeHttp(
  path: string,
  caller: Caller | undefined,
): { status: 401 | 403; message: string } | undefined {
  if (!caller || caller.transport === 'plaintext') return undefined;
  if (OPEN_HTTP_PATHS.has(path.split('?')[0] ?? '')) return undefined;
  if (!caller.identity) {
    return { status: 401, message: 'a client certificate signed by the cluster CA is required (mTLS)\n' };
  }
  if (!HTTP_ROLES.includes(caller.identity.role)) {
    return { status: 403, message: `${describeIdentity(caller.identity)} may not use ${path}\n` };
  }
  return undefined;
}
