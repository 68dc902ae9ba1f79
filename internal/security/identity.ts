import type { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { createContextKey } from '@connectrpc/connect';

/**
 * Service identities: every process holds a certificate whose URI SAN names its
 * role and id, SPIFFE-style (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md):
 * `spiffe://haystack/<role>/<id>`, e.g. spiffe://haystack/store/store-1.
 */

/** The trust domain of every Haystack identity. */
export const TRUST_DOMAIN = 'haystack';

export const ROLES = ['directory', 'store', 'replication', 'gateway', 'envoy', 'admin'] as const;
export type Role = (typeof ROLES)[number];

export interface Identity {
  role: Role;
  /** Instance id (store-1, directory-0...); [A-Za-z0-9._-]{1,64}. */
  id: string;
}

const ID = /^[A-Za-z0-9._-]{1,64}$/;

/** True when `id` can be an instance id in a SPIFFE ID ([A-Za-z0-9._-]{1,64}). */
export function isInstanceId(id: string): boolean {
  return ID.test(id);
}

export function spiffeId(identity: Identity): string {
  return `spiffe://${TRUST_DOMAIN}/${identity.role}/${identity.id}`;
}

/** The identity in a SPIFFE ID of our trust domain; undefined for anything else. */
export function parseSpiffeId(uri: string): Identity | undefined {
  const m = /^spiffe:\/\/([^/]+)\/([a-z]+)\/([^/]+)$/.exec(uri);
  if (!m || m[1] !== TRUST_DOMAIN) return undefined;
  const role = m[2] as Role;
  const id = m[3] ?? '';
  if (!ROLES.includes(role) || !ID.test(id)) return undefined;
  return { role, id };
}

/**
 * The identity named by a certificate's subjectAltName ("URI:spiffe://...",
 * as Node formats it); exactly one Haystack URI SAN, else undefined.
 */
export function identityFromAltNames(subjectAltName: string | undefined): Identity | undefined {
  if (!subjectAltName) return undefined;
  const found = subjectAltName
    .split(/,\s*/)
    .filter((s) => s.startsWith('URI:'))
    .map((s) => parseSpiffeId(s.slice(4)))
    .filter((i): i is Identity => i !== undefined);
  return found.length === 1 ? found[0] : undefined;
}

/** The identity of a certificate read from disk (a process's own). */
export function identityOfCertificate(cert: X509Certificate): Identity | undefined {
  return identityFromAltNames(cert.subjectAltName);
}

const bySocket = new WeakMap<TLSSocket, Identity | null>();

/**
 * The verified identity of the peer on a TLS connection (chain checked against
 * our CA by the handshake), cached per connection; undefined when the peer
 * showed no certificate, one our CA did not sign, or one without a Haystack ID.
 */
export function peerIdentity(socket: TLSSocket | undefined): Identity | undefined {
  if (!socket || typeof socket.getPeerCertificate !== 'function') return undefined;
  let id = bySocket.get(socket);
  if (id === undefined) {
    id = socket.authorized
      ? (identityFromAltNames(socket.getPeerCertificate().subjectaltname) ?? null)
      : null;
    bySocket.set(socket, id);
  }
  return id ?? undefined;
}

/**
 * Who made a call, as the server saw it: over mTLS, the verified identity (none
 * when the client showed no valid certificate); over INSECURE_PLAINTEXT, nothing
 * is known and nothing is checked.
 */
export type Caller =
  | {
      transport: 'mtls';
      identity: Identity | undefined;
      /** Directory ids this server accepts as peers (empty: any directory identity). */
      directoryPeerIds: readonly string[];
    }
  | { transport: 'plaintext' };

/**
 * Where the caller travels in connect's context values (both server paths set
 * it). Undefined only for handlers called in-process (unit tests).
 */
export const callerKey = createContextKey<Caller | undefined>(undefined, {
  description: 'the caller of this call (mTLS identity)',
});

export function describeIdentity(identity: Identity | undefined): string {
  return identity ? spiffeId(identity) : 'an unauthenticated caller';
}
