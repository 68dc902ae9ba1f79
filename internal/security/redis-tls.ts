import type { ConnectionOptions } from 'node:tls';
import { MESH_CIPHERS, type TransportSecurity } from './tls-config.js';

/**
 * ioredis's `tls` option for a REDIS_URL. `redis://`: none (plain TCP, ACL password
 * only). `rediss://`: TLS 1.2+ that checks Redis's certificate against the mesh CA
 * and Redis's host name (Node's checkServerIdentity, RFC 9525), and presents this
 * process's mesh certificate, which a Redis with `tls-auth-clients yes` requires
 * (redisTlsServerArgs). In plaintext mode (INSECURE_PLAINTEXT=1) a `rediss://` URL
 * gets Node's default trust store and no client certificate.
 */
export function redisTls(url: string, security: TransportSecurity): ConnectionOptions | undefined {
  if (!url.startsWith('rediss://')) return undefined;
  if (security.mode === 'plaintext') return { minVersion: 'TLSv1.2' };
  const o: ConnectionOptions = { minVersion: 'TLSv1.2', ciphers: MESH_CIPHERS };
  // Read at each (re)connect (ioredis copies the options into tls.connect), so a
  // renewed certificate (cert-reload.ts) is shown from the next connection on.
  for (const name of ['ca', 'cert', 'key'] as const) {
    Object.defineProperty(o, name, { enumerable: true, get: () => security[name] });
  }
  return o;
}

/** PEM files of a Redis server's TLS certificate (cert-manager's layout). */
export interface RedisTlsFiles {
  certFile: string;
  keyFile: string;
  caFile: string;
}

/**
 * redis-server arguments that serve TLS only on `port` (the plain port closed) and
 * require a client certificate signed by the CA in `files.caFile`
 * (https://redis.io/docs/latest/operate/oss_and_stack/management/security/encryption/).
 */
export function redisTlsServerArgs(port: number, files: RedisTlsFiles): string[] {
  return [
    '--port',
    '0',
    '--tls-port',
    String(port),
    '--tls-cert-file',
    files.certFile,
    '--tls-key-file',
    files.keyFile,
    '--tls-ca-cert-file',
    files.caFile,
    '--tls-auth-clients',
    'yes',
    '--tls-protocols',
    'TLSv1.2 TLSv1.3',
  ];
}
