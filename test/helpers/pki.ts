import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Transport } from '@connectrpc/connect';
import type { Http2SessionOptions } from '@connectrpc/connect-node';
import { peerTransport } from '../../internal/rpc/transport.js';
import {
  type CertificateAuthority,
  createCa,
  type IdentityFiles,
  tlsEnv,
  writeIdentity,
  writeServerCertificate,
} from '../../internal/security/ca.js';
import type { Identity, Role } from '../../internal/security/identity.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { tmpName } from './tools.js';

/**
 * The test suite's throwaway PKI: one CA per test file (per vitest worker), a
 * certificate per process and per test client, written in cert-manager's layout
 * under a temp directory. Every server a test starts serves mTLS with one.
 */

interface Pki {
  ca: CertificateAuthority;
  dir: string;
  issued: Map<string, Promise<IdentityFiles>>;
}

let pki: Promise<Pki> | undefined;

function thePki(): Promise<Pki> {
  pki ??= createCa(1).then((ca) => ({ ca, dir: tmpName('pki'), issued: new Map() }));
  return pki;
}

/** The files of `identity` (issued once per test file). */
export async function identityFiles(identity: Identity): Promise<IdentityFiles> {
  const p = await thePki();
  const key = `${identity.role}/${identity.id}`;
  let f = p.issued.get(key);
  if (!f) {
    f = writeIdentity(p.ca, p.dir, identity);
    p.issued.set(key, f);
  }
  return f;
}

/**
 * The files of `identity` with `hosts` (IPs or DNS names) as its address SANs, for a
 * process reached at an address other than loopback (test/netns/: one per namespace).
 */
export async function identityFilesAt(identity: Identity, hosts: string[]): Promise<IdentityFiles> {
  const p = await thePki();
  const key = `${identity.role}/${identity.id}@${hosts.join(',')}`;
  let f = p.issued.get(key);
  if (!f) {
    f = writeIdentity(p.ca, path.join(p.dir, hosts.join('_')), identity, hosts);
    p.issued.set(key, f);
  }
  return f;
}

/** A TLS server certificate for `name` on loopback, from the test file's CA, with no mesh identity (a Redis's). */
export async function serverCertificateFiles(name: string): Promise<IdentityFiles> {
  const p = await thePki();
  const key = `server:${name}`;
  let f = p.issued.get(key);
  if (!f) {
    f = writeServerCertificate(p.ca, path.join(p.dir, 'servers'), name);
    p.issued.set(key, f);
  }
  return f;
}

/** TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE for a process with `identity`. */
export async function identityEnv(identity: Identity): Promise<Record<string, string>> {
  return tlsEnv(await identityFiles(identity));
}

/** The security of an in-process client or server with `identity`. */
export async function securityOf(identity: Identity): Promise<TransportSecurity> {
  const f = await identityFiles(identity);
  return {
    mode: 'mtls',
    cert: readFileSync(f.certFile, 'utf8'),
    key: readFileSync(f.keyFile, 'utf8'),
    ca: readFileSync(f.caFile, 'utf8'),
    identity,
    directoryPeerIds: [],
  };
}

/** The default identity of the tests' own clients: an operator. */
export const TEST_ADMIN: Identity = { role: 'admin', id: 'test' };
/** The identity of the tests' in-process internal clients (DirectoryClient, ClientPool). */
export const TEST_GATEWAY: Identity = { role: 'gateway', id: 'test-gateway' };

/**
 * A gRPC transport (connect-node) from the test to the server at `address`,
 * which must prove `serverRole`; the test shows `as` (default: an admin).
 */
export async function testTransport(
  address: string,
  serverRole: Role,
  as: Identity = TEST_ADMIN,
  session: Http2SessionOptions = {},
): Promise<Transport> {
  return peerTransport(address, [serverRole], session, await securityOf(as));
}

/** Files for grpcurl: -cacert, -cert, -key. */
export async function grpcurlTlsArgs(as: Identity = TEST_ADMIN): Promise<string[]> {
  const f = await identityFiles(as);
  return ['-cacert', f.caFile, '-cert', f.certFile, '-key', f.keyFile];
}

/** The identity a `haystack <role>` child process gets from its args and env (as its config derives it). */
export function identityForProcess(
  args: string[],
  env: Record<string, string | undefined>,
): Identity | undefined {
  const role = args[0] as Role | undefined;
  const idVar: Partial<Record<Role, string>> = {
    store: 'STORE_ID',
    directory: 'DIRECTORY_ID',
    gateway: 'GATEWAY_ID',
    replication: 'MANAGER_ID',
  };
  if (!role || !idVar[role]) return undefined;
  const explicit = env[idVar[role] as string];
  if (explicit) return { role, id: explicit };
  const i = args.indexOf('--listen');
  const listen = i >= 0 ? args[i + 1] : env.LISTEN;
  const port = listen?.split(':').pop();
  if (!port) return undefined;
  return { role, id: `${role}-${port}` };
}

/**
 * A plain HTTP GET over TLS (HTTP/1.1) to a server of the test CA: /metrics,
 * /healthz, /blobs/{id}; with a client certificate unless `as` is null.
 */
export async function httpsGet(
  url: string,
  as: Identity | null = TEST_ADMIN,
): Promise<{ status: number; body: string; headers: Record<string, string | string[] | undefined> }> {
  const res = await httpsRequest(url, {}, as);
  return { ...res, body: res.body.toString('utf8') };
}

/** An HTTP/1.1 request over TLS to a server of the test CA (as httpsGet), with a method, headers and a body. */
export async function httpsRequest(
  url: string,
  o: { method?: string; headers?: Record<string, string>; body?: Uint8Array | string },
  as: Identity | null = TEST_ADMIN,
): Promise<{ status: number; body: Buffer; headers: Record<string, string | string[] | undefined> }> {
  const ca = (await securityOf(TEST_ADMIN)) as Extract<TransportSecurity, { mode: 'mtls' }>;
  const me = as ? ((await securityOf(as)) as Extract<TransportSecurity, { mode: 'mtls' }>) : undefined;
  const { request } = await import('node:https');
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: o.method ?? 'GET',
        headers: o.headers,
        ca: ca.ca,
        ...(me ? { cert: me.cert, key: me.key } : {}),
        checkServerIdentity: () => undefined,
        agent: false,
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts), headers: res.headers }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(o.body);
  });
}

/** HAYSTACK_TLS_CERT/KEY/CA for the CLI as `as` (default the test admin). */
export async function adminTlsEnv(as: Identity = TEST_ADMIN): Promise<Record<string, string>> {
  const f = await identityFiles(as);
  return { HAYSTACK_TLS_CERT: f.certFile, HAYSTACK_TLS_KEY: f.keyFile, HAYSTACK_TLS_CA: f.caFile };
}

/** A transport that shows NO client certificate (it still checks the server's). */
export async function noCertTransport(address: string, serverRole: Role): Promise<Transport> {
  const s = (await securityOf(TEST_ADMIN)) as Extract<TransportSecurity, { mode: 'mtls' }>;
  return peerTransport(address, [serverRole], {}, { ...s, cert: '', key: '' });
}

/** node:http2 / node:https client options showing `as`'s certificate (connect-node's nodeOptions). */
export async function tlsNodeOptions(as: Identity = TEST_ADMIN) {
  const s = (await securityOf(as)) as Extract<TransportSecurity, { mode: 'mtls' }>;
  return { ca: s.ca, cert: s.cert, key: s.key, checkServerIdentity: () => undefined };
}
