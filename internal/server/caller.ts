import type http from 'node:http';
import type http2 from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { type Caller, peerIdentity } from '../security/identity.js';
import type { TransportSecurity } from '../security/tls-config.js';

/** The caller on a connection: its verified certificate identity over mTLS. */
export function callerOfConnection(socket: unknown, security: TransportSecurity): Caller {
  if (security.mode === 'plaintext') return { transport: 'plaintext' };
  return {
    transport: 'mtls',
    identity: peerIdentity(socket as TLSSocket | undefined),
    directoryPeerIds: security.directoryPeerIds,
  };
}

/** The caller of an HTTP/1.1 request or an HTTP/2 compatibility-layer request. */
export function callerOfRequest(
  req: http.IncomingMessage | http2.Http2ServerRequest,
  security: TransportSecurity,
): Caller {
  const socket = 'stream' in req && req.stream ? req.stream.session?.socket : req.socket;
  return callerOfConnection(socket, security);
}
