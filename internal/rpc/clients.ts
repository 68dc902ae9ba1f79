import type { DescService } from '@bufbuild/protobuf';
import { type Client, createClient, type Transport } from '@connectrpc/connect';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { type Identity, type Role, spiffeId } from '../security/identity.js';
import type { TransportSecurity } from '../security/tls-config.js';
import { tracedTransport } from '../server/tracing.js';
import { createDirectGrpcTransport, type DirectTransport } from './direct-transport.js';
import { clientSecurity, peerTransport } from './transport.js';

/**
 * Services whose servers take plain gRPC on the direct path (the store's data
 * plane, see internal/server/direct-grpc.ts); their clients use the matching
 * lean transport.
 */
const DIRECT_SERVICES = new Set(['haystack.v1.StoreService']);

/**
 * A store as the directory names it: its id and the address it registered
 * (a StoreTarget, a ReplicaLocation, a StoreRecord all are one).
 */
export interface StoreAt {
  readonly storeId: string;
  readonly address: string;
}

/** The role a server of each service must prove over mTLS. */
const SERVER_ROLE: Record<string, Role> = {
  'haystack.v1.StoreService': 'store',
  'haystack.v1.DirectoryService': 'directory',
  'haystack.v1.ReplicationService': 'replication',
  'haystack.v1.BlobService': 'gateway',
};

/** The role `service`'s servers prove (a store for StoreService...). */
export function serverRoleOf(service: DescService): Role {
  const role = SERVER_ROLE[service.typeName];
  if (!role) throw new Error(`no server role known for ${service.typeName}`);
  return role;
}

/**
 * gRPC clients to peers by host:port, one HTTP/2 transport per address and
 * expected server, reused across calls (each transport multiplexes streams over
 * one session). Every session is mTLS with this process's certificate, and the
 * server must show the role of the service called: a StoreService client only
 * ever talks to a store, whatever address it was given. A client may also pin
 * the exact identity (`client(StoreService, address, { role: 'store', id })`):
 * the store a request names as a peer (forward_to, Replicate.source) is then
 * the only server the call can reach; the pool key includes that identity, so a
 * pinned session is never shared with another expectation.
 */
export class ClientPool {
  private readonly transports = new Map<string, Transport>();
  private readonly direct = new Map<string, { raw: DirectTransport; traced: Transport }>();

  constructor(private readonly security: TransportSecurity = clientSecurity()) {}

  transport(address: string, role: Role): Transport {
    const key = `${role}@${address}`;
    let t = this.transports.get(key);
    if (!t) {
      t = tracedTransport(
        peerTransport(
          address,
          [role],
          { pingIntervalMs: 10_000, idleConnectionTimeoutMs: 60_000 },
          this.security,
        ),
      );
      this.transports.set(key, t);
    }
    return t;
  }

  /**
   * A direct gRPC transport to the store at `address` (see direct-transport.ts);
   * with `identity`, the store must prove exactly that identity.
   */
  directTransport(address: string, identity?: Identity): Transport {
    return this.directEntry(address, identity).traced;
  }

  /**
   * Completes (or reuses) the mTLS session to the store at `address` pinned to
   * `identity`: rejects FAILED_PRECONDITION when the server there is anyone
   * else, UNAVAILABLE when it cannot be reached, before any byte of a call is
   * sent (so a caller can refuse a request before it writes anything itself).
   * Resolves at once in plaintext mode (no identities to check).
   */
  async handshake(address: string, identity: Identity, signal?: AbortSignal): Promise<void> {
    if (this.security.mode !== 'mtls') return;
    await this.directEntry(address, identity).raw.handshake(signal);
  }

  private directEntry(address: string, identity?: Identity) {
    const key = `${identity ? spiffeId(identity) : 'store'}@${address}`;
    let t = this.direct.get(key);
    if (!t) {
      const raw = createDirectGrpcTransport({
        address,
        pingIntervalMs: 10_000,
        idleTimeoutMs: 60_000,
        security: this.security,
        serverRoles: ['store'],
        ...(identity ? { serverIdentity: identity } : {}),
      });
      t = { raw, traced: tracedTransport(raw) };
      this.direct.set(key, t);
    }
    return t;
  }

  /**
   * A StoreService client for the store the directory names `store.storeId` at
   * `store.address`: the server there must prove exactly
   * spiffe://haystack/store/<storeId>, not just some store. A stale or forged
   * address (another store's, a gateway's) fails every call FAILED_PRECONDITION
   * naming both identities, before a request byte is sent.
   */
  store(store: StoreAt): Client<typeof StoreService> {
    return this.client(StoreService, store.address, { role: 'store', id: store.storeId });
  }

  /**
   * A client of `service` at `address`; the server must prove the service's
   * role, or exactly `identity` when given (of that same role).
   */
  client<S extends DescService>(service: S, address: string, identity?: Identity): Client<S> {
    const role = serverRoleOf(service);
    if (identity && identity.role !== role) {
      throw new Error(`a ${service.typeName} server is a ${role}, not ${spiffeId(identity)}`);
    }
    if (DIRECT_SERVICES.has(service.typeName)) {
      return createClient(service, this.directTransport(address, identity));
    }
    if (identity)
      throw new Error(`pinned identities are only supported on the direct path, not ${service.typeName}`);
    return createClient(service, this.transport(address, role));
  }
}
