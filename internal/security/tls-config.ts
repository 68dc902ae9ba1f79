import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { DEFAULT_CIPHERS, type PeerCertificate } from 'node:tls';
import type { EnvReader } from '../config/env.js';
import {
  describeIdentity,
  type Identity,
  identityFromAltNames,
  identityOfCertificate,
  type Role,
} from './identity.js';

/**
 * How a process talks to the mesh: mTLS with its own certificate (the default;
 * the files named by TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE), or plaintext
 * with no identities and no authorization, only when INSECURE_PLAINTEXT=1.
 */
export type TransportSecurity =
  | {
      mode: 'mtls';
      /** PEMs. */
      cert: string;
      key: string;
      ca: string;
      /** This process's identity (from its own certificate). */
      identity: Identity;
      /** Directory ids allowed to make directory peer calls (empty: any directory identity). */
      directoryPeerIds: string[];
      /**
       * Where the PEMs came from and how often to read them again (ms; 0: never), for
       * renewed certificates (cert-reload.ts). Absent for securities made in memory.
       * `cert`, `key` and `ca` above change in place when a reload succeeds.
       */
      reload?: { certFile: string; keyFile: string; caFile: string; intervalMs: number };
    }
  | { mode: 'plaintext' };

export const SECURITY_ENV_HELP = `
  TLS_CERT_FILE          this process's certificate (PEM; URI SAN spiffe://haystack/<role>/<id>)
  TLS_KEY_FILE           its private key (PEM)
  TLS_CA_FILE            the CA certificate(s) every peer must chain to (PEM)
  TLS_RELOAD_INTERVAL    how often the three files are read again (default 60s; 0 = never): a renewed
                         certificate of the same identity is used for new connections without a restart
  DIRECTORY_PEER_IDS     comma-separated directory ids allowed to make directory peer calls
                         (default: any certificate with role directory)
  INSECURE_PLAINTEXT     1: no TLS, no identities, no authorization (never in production)`;

/**
 * Reads the transport security of a process from the environment; problems go
 * to `r` naming the variable (a missing or unreadable file, a certificate
 * without a Haystack identity or of another role than `role`).
 */
export function readTransportSecurity(r: EnvReader, role: Role | undefined): TransportSecurity {
  if (r.bool('INSECURE_PLAINTEXT', false)) return { mode: 'plaintext' };
  const read = (name: string): string => {
    const file = r.string(name, '');
    if (file === '') {
      r.problem(
        `${name} is not set: give the PEM file, or set INSECURE_PLAINTEXT=1 (no TLS, no authorization)`,
      );
      return '';
    }
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      r.problem(`${name}=${JSON.stringify(file)}: cannot read it (${(err as Error).message})`);
      return '';
    }
  };
  const cert = read('TLS_CERT_FILE');
  const key = read('TLS_KEY_FILE');
  const ca = read('TLS_CA_FILE');
  const intervalMs = r.duration('TLS_RELOAD_INTERVAL', 60_000, { maxMs: 86_400_000 });
  if (intervalMs > 0 && intervalMs < 1000) r.problem('TLS_RELOAD_INTERVAL: 0 (never) or at least 1s');
  const directoryPeerIds = r
    .string('DIRECTORY_PEER_IDS', '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  let identity: Identity | undefined;
  if (cert !== '') {
    try {
      identity = identityOfCertificate(new X509Certificate(cert));
      if (!identity) r.problem('TLS_CERT_FILE: the certificate has no URI SAN spiffe://haystack/<role>/<id>');
      else if (role && identity.role !== role) {
        r.problem(
          `TLS_CERT_FILE: the certificate is for ${describeIdentity(identity)}, this process is a ${role}`,
        );
      }
    } catch (err) {
      r.problem(`TLS_CERT_FILE: not a PEM certificate (${(err as Error).message})`);
    }
  }
  if (!identity) return { mode: 'plaintext' }; // never used: r.done() throws first
  const reload = {
    certFile: r.string('TLS_CERT_FILE', ''),
    keyFile: r.string('TLS_KEY_FILE', ''),
    caFile: r.string('TLS_CA_FILE', ''),
    intervalMs,
  };
  return { mode: 'mtls', cert, key, ca, identity, directoryPeerIds, reload };
}

/** The TLS 1.3 suites every hop offers, cheapest first (all AEAD, all with forward secrecy). */
export const TLS13_SUITES = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
];

/**
 * The cipher list of every server and client of the mesh (Node's `ciphers`
 * option, which also orders the TLS 1.3 suites): AES-128-GCM first, where
 * Node's default puts AES-256-GCM first. With AES-NI both are fast, but 128-bit
 * keys take 10 AES rounds instead of 14: the cheaper one for the 64 KiB blobs
 * that cross four TLS hops per write, and still a 128-bit security level (as
 * TLS 1.3's own mandatory suite and BoringSSL's, i.e. Envoy's, first choice).
 * The server's order decides (`honorCipherOrder`). The TLS 1.2 part is Node's
 * default list unchanged (ECDHE + AEAD first; Envoy's upstream speaks 1.2).
 * See docs/security.md "Cipher suites".
 */
export const MESH_CIPHERS = [
  ...TLS13_SUITES,
  ...DEFAULT_CIPHERS.split(':').filter((c) => c !== '' && !TLS13_SUITES.includes(c)),
].join(':');

/** What a server must prove over mTLS: one of some roles, or exactly one identity. */
export type ServerExpectation = readonly Role[] | Identity;

/**
 * The `code` of the error a handshake fails with when the server's certificate
 * names another identity than the one the client pinned (see expectServerIdentity).
 */
export const PEER_IDENTITY_MISMATCH = 'ERR_HAYSTACK_PEER_IDENTITY';

/**
 * A checkServerIdentity for TLS clients: the server must show a certificate of
 * our CA (checked by the handshake) naming one of `roles`. Hostnames are not
 * checked: the SPIFFE ID, not the address, is what a peer proves (so dialing
 * an arbitrary address the caller named only ever reaches a service of that role).
 */
export function expectServerRole(
  roles: readonly Role[],
): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) => {
    const id = identityFromAltNames(cert.subjectaltname);
    if (id && roles.includes(id.role)) return undefined;
    return new Error(`the server is ${describeIdentity(id)}, expected a ${roles.join(' or ')}`);
  };
}

/**
 * A checkServerIdentity that pins one identity: the server's certificate must
 * name exactly `expected` (role and id), e.g. spiffe://haystack/store/store-2
 * when a store forwards to the replica the request calls store-2. Any other
 * server (another store, a gateway, a directory) fails the handshake with an
 * error whose `code` is PEER_IDENTITY_MISMATCH, before a request byte is sent.
 */
export function expectServerIdentity(
  expected: Identity,
): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) => {
    const id = identityFromAltNames(cert.subjectaltname);
    if (id && id.role === expected.role && id.id === expected.id) return undefined;
    return Object.assign(
      new Error(`the server is ${describeIdentity(id)}, expected ${describeIdentity(expected)}`),
      { code: PEER_IDENTITY_MISMATCH },
    );
  };
}

/** The checkServerIdentity for `expect` (a role list or one pinned identity). */
export function checkServerFor(
  expect: ServerExpectation,
): (host: string, cert: PeerCertificate) => Error | undefined {
  return 'role' in expect ? expectServerIdentity(expect) : expectServerRole(expect);
}

/** True when `err` (or its cause) is a handshake refused by expectServerIdentity. */
export function isPeerIdentityMismatch(err: unknown): boolean {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 4; depth++) {
    if (e.code === PEER_IDENTITY_MISMATCH) return true;
    e = e.cause as typeof e;
  }
  return false;
}
