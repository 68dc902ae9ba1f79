import type { Transport } from '@connectrpc/connect';
import { createGrpcTransport, type Http2SessionOptions } from '@connectrpc/connect-node';
import type { Role } from '../security/identity.js';
import type { TransportSecurity } from '../security/tls-config.js';
import { unreachableAsUnavailable } from './errors.js';
import { retryRefusedUnary } from './retry-refused.js';
import { clientSessionOptions, schemeOf } from './session.js';
import { PeerSessionManager } from './session-manager.js';

let processSecurity: TransportSecurity | undefined;

/**
 * Sets how this server process's clients reach peers (its certificate and CA),
 * once at start from its validated config (internal/server/run.ts). Kept here
 * rather than threaded through every client constructor: each process has one
 * identity.
 */
export function setClientSecurity(security: TransportSecurity): void {
  processSecurity = security;
}

/** The security set by setClientSecurity; fails loudly when a client is made before it. */
export function clientSecurity(): TransportSecurity {
  if (!processSecurity) {
    throw new Error('no transport security configured for internal clients (setClientSecurity not called)');
  }
  return processSecurity;
}

/**
 * A connect-node gRPC transport to a peer at host:port that must prove one of
 * `serverRoles` (e.g. a directory), with this process's certificate. A call
 * that cannot reach the peer fails UNAVAILABLE naming it (rpc/errors.ts); a
 * unary call whose stream the peer refused unprocessed is retried once
 * (retry-refused.ts).
 */
export function peerTransport(
  address: string,
  serverRoles: readonly Role[],
  session: Http2SessionOptions = {},
  security: TransportSecurity = clientSecurity(),
): Transport {
  const baseUrl = `${schemeOf(security)}://${address}`;
  return createGrpcTransport({
    baseUrl,
    // Outer first: a refused unary call is retried before its error is mapped.
    interceptors: [unreachableAsUnavailable(`${serverRoles.join('/')} at ${address}`), retryRefusedUnary()],
    sessionManager: new PeerSessionManager(baseUrl, session, clientSessionOptions(security, serverRoles)),
  });
}
