import type { Jwks } from '../auth/keys.js';
import type { HttpRoute } from '../server/server.js';

/**
 * GET /.well-known/jwks.json: the public keys that verify tokens (RFC 7517), for Envoy's
 * jwt_authn `remote_jwks` and for anyone checking a token: the keys now in force (reloaded
 * from AUTH_JWKS_FILE). 404 without AUTH_JWKS_FILE.
 */
export function jwksRoute(jwks: () => Jwks | undefined): HttpRoute {
  return (req, res) => {
    if ((req.url ?? '').split('?')[0] !== '/.well-known/jwks.json') return false;
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    const keys = jwks();
    const body = keys ? `${JSON.stringify(keys)}\n` : undefined;
    if (!body) {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('no token keys on this gateway (AUTH_JWKS_FILE)\n');
      return true;
    }
    res.writeHead(200, { 'content-type': 'application/jwk-set+json', 'cache-control': 'max-age=60' });
    res.end(req.method === 'HEAD' ? '' : body);
    return true;
  };
}
