import type http2 from 'node:http2';
import {
  checkServerFor,
  MESH_CIPHERS,
  type ServerExpectation,
  type TransportSecurity,
} from '../security/tls-config.js';
import { MAX_FRAME_SIZE, STREAM_WINDOW } from '../server/listener.js';

/**
 * Options of every HTTP/2 client session this process opens to a peer: mTLS
 * with its own certificate (the server must show one of the roles in `server`,
 * or exactly the identity `server` pins), wide
 * flow-control windows, no Nagle delay for small frames (headers, trailers,
 * WINDOW_UPDATEs). Passed per session, to connect-node (session manager) and to
 * the direct transport alike.
 */
export function clientSessionOptions(
  security: TransportSecurity,
  server: ServerExpectation,
): http2.SecureClientSessionOptions {
  const o: http2.SecureClientSessionOptions = {
    settings: { initialWindowSize: STREAM_WINDOW, maxFrameSize: MAX_FRAME_SIZE },
    // Handed on to net.connect / tls.connect by http2.connect.
    ...({ noDelay: true } as object),
  };
  if (security.mode === 'mtls') {
    o.ciphers = MESH_CIPHERS;
    o.checkServerIdentity = checkServerFor(server);
    // Getters over `security`, read when a session connects (http2.connect copies the
    // options per connection; never spread this object), so a certificate renewed in
    // place (security/cert-reload.ts) is what every later connection shows.
    const live = (name: 'ca' | 'cert' | 'key') =>
      Object.defineProperty(o, name, { enumerable: true, get: () => security[name] });
    live('ca');
    // Empty only for tests that show a server a client without a certificate.
    if (security.cert) {
      live('cert');
      live('key');
    }
  }
  return o;
}

/** The URL scheme peers are reached with. */
export function schemeOf(security: TransportSecurity): 'https' | 'http' {
  return security.mode === 'mtls' ? 'https' : 'http';
}
