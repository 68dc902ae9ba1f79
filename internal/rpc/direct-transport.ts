import { Code, ConnectError } from '@connectrpc/connect';
import { createH2GrpcTransport, type H2Transport, unreachableError } from '../sdk/h2-grpc-transport.js';
import type { Identity, Role } from '../security/identity.js';
import { isPeerIdentityMismatch, type TransportSecurity } from '../security/tls-config.js';
import { CONNECTION_WINDOW } from '../server/listener.js';
import { clientSessionOptions, schemeOf } from './session.js';
import { clientSecurity } from './transport.js';

/**
 * The mesh's direct path to a peer: sdk/h2-grpc-transport.ts (plain gRPC over one
 * HTTP/2 session, without connect-node's per-call CPU, which bounded store-to-store
 * and gateway-to-store throughput) with this process's mTLS and the peer identity
 * it must prove.
 */
export interface DirectTransportOptions {
  /** host:port of the server. */
  address: string;
  /** Keepalive PING interval while calls are open; a missed ack fails them. */
  pingIntervalMs?: number;
  /** Closes the session after this long without calls. */
  idleTimeoutMs?: number;
  /** Largest response message accepted. */
  maxMessageBytes?: number;
  /** mTLS (this process's certificate; default: the process's, see transport.ts) or plaintext. */
  security?: TransportSecurity;
  /** Roles the server must prove (default: store, the only service served on the direct path). */
  serverRoles?: readonly Role[];
  /**
   * The one identity the server must prove instead (a pinned peer, e.g. the store a
   * forward_to entry names); any other server fails the call FAILED_PRECONDITION.
   */
  serverIdentity?: Identity;
}

/**
 * A direct transport. Its handshake refuses a server that cannot prove what it must
 * (serverIdentity, serverRoles): FAILED_PRECONDITION for another identity.
 */
export type DirectTransport = H2Transport;

export function createDirectGrpcTransport(o: DirectTransportOptions): DirectTransport {
  const security = o.security ?? clientSecurity();
  const server = o.serverIdentity ?? o.serverRoles ?? ['store'];
  return createH2GrpcTransport({
    url: `${schemeOf(security)}://${o.address}`,
    session: clientSessionOptions(security, server),
    connectionWindow: CONNECTION_WINDOW,
    peer: o.serverIdentity
      ? `${o.serverIdentity.role} ${o.serverIdentity.id} at ${o.address}`
      : `${(o.serverRoles ?? ['store']).join('/')} at ${o.address}`,
    ...(o.pingIntervalMs !== undefined ? { pingIntervalMs: o.pingIntervalMs } : {}),
    ...(o.idleTimeoutMs !== undefined ? { idleTimeoutMs: o.idleTimeoutMs } : {}),
    ...(o.maxMessageBytes !== undefined ? { maxMessageBytes: o.maxMessageBytes } : {}),
    transportError: meshTransportError,
  });
}

/** unreachableError, and FAILED_PRECONDITION when the server proved another identity than the pinned one. */
function meshTransportError(err: unknown, peer: string): ConnectError {
  // Retrying the same address cannot help until whoever named it learns the right one.
  if (!(err instanceof ConnectError) && isPeerIdentityMismatch(err)) {
    return new ConnectError((err as Error).message, Code.FailedPrecondition, undefined, undefined, err);
  }
  return unreachableError(err, peer);
}
