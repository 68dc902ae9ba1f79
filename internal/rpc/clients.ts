import type { DescService } from '@bufbuild/protobuf';
import { type Client, createClient, type Transport } from '@connectrpc/connect';
import type { Role } from '../security/identity.js';
import type { TransportSecurity } from '../security/tls-config.js';
import { tracedTransport } from '../server/tracing.js';
import { createDirectGrpcTransport } from './direct-transport.js';
import { clientSecurity, peerTransport } from './transport.js';

/**
 * Services whose servers take plain gRPC on the direct path (the store's data
 * plane, see internal/server/direct-grpc.ts); their clients use the matching
 * lean transport.
 */
const DIRECT_SERVICES = new Set(['haystack.v1.StoreService']);

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
 * role, reused across calls (each transport multiplexes streams over one
 * session). Every session is mTLS with this process's certificate, and the
 * server must show the role of the service called: a StoreService client only
 * ever talks to a store, whatever address it was given.
 */
export class ClientPool {
  private readonly transports = new Map<string, Transport>();
  private readonly direct = new Map<string, Transport>();

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

  /** A direct gRPC transport to the store at `address` (see direct-transport.ts). */
  directTransport(address: string): Transport {
    let t = this.direct.get(address);
    if (!t) {
      t = tracedTransport(
        createDirectGrpcTransport({
          address,
          pingIntervalMs: 10_000,
          idleTimeoutMs: 60_000,
          security: this.security,
          serverRoles: ['store'],
        }),
      );
      this.direct.set(address, t);
    }
    return t;
  }

  client<S extends DescService>(service: S, address: string): Client<S> {
    const transport = DIRECT_SERVICES.has(service.typeName)
      ? this.directTransport(address)
      : this.transport(address, serverRoleOf(service));
    return createClient(service, transport);
  }
}
