import 'reflect-metadata'; // @peculiar/x509's dependency injection needs it; only dev and tests load this file
import { webcrypto } from 'node:crypto';

type CryptoKeyPair = webcrypto.CryptoKeyPair;

import { mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import * as x509 from '@peculiar/x509';
import { type Identity, spiffeId } from './identity.js';

/**
 * A throwaway certificate authority for `haystack dev` and the tests: ECDSA
 * P-256 keys, one CA, one leaf per process whose URI SAN is its SPIFFE ID (see
 * identity.ts) plus the DNS names and IPs it is reached at. Production takes
 * certificates from cert-manager (docs/security.md); nothing here is for deploy/.
 */

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;

export interface CertificateAuthority {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
  /** PEM of the CA certificate (what every process trusts). */
  certPem: string;
}

/** Files of one identity, as the processes read them (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE). */
export interface IdentityFiles {
  certFile: string;
  keyFile: string;
  caFile: string;
}

function serial(): string {
  // Positive 16-byte serial (RFC 5280 4.1.2.2: at most 20 octets, positive).
  const b = webcrypto.getRandomValues(new Uint8Array(16));
  b[0] = (b[0] ?? 0) & 0x7f;
  return Buffer.from(b).toString('hex');
}

async function keyPair(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function keyPem(keys: CryptoKeyPair): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

/** `hosts` as subjectAltName entries: IP addresses as iPAddress, the rest as dNSName. */
function hostNames(hosts: string[]): x509.JsonGeneralName[] {
  return hosts.map((h) =>
    net.isIP(h) ? { type: 'ip' as const, value: h } : { type: 'dns' as const, value: h },
  );
}

export async function createCa(validDays = 30): Promise<CertificateAuthority> {
  const keys = await keyPair();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: 'CN=haystack throwaway CA',
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + validDays * DAY_MS),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, keys, certPem: cert.toString('pem') };
}

/**
 * A leaf certificate for `identity`, valid as TLS server and client, with
 * `hosts` (DNS names or IPs) as extra SANs; returns PEMs of cert and key.
 */
export function issueCertificate(
  ca: CertificateAuthority,
  identity: Identity,
  hosts: string[] = ['localhost', '127.0.0.1'],
  validDays = 30,
): Promise<{ certPem: string; keyPem: string }> {
  return issueLeaf(
    ca,
    `CN=${identity.role}/${identity.id}`,
    [{ type: 'url', value: spiffeId(identity) }, ...hostNames(hosts)],
    validDays,
  );
}

/**
 * A TLS server certificate for a service outside the mesh's roles (Redis): CN
 * `name`, `hosts` as its only SANs. It names no Haystack identity, so no RPC
 * accepts it as a caller (authz.ts); clients check it by host name, as for any
 * TLS server (RFC 9525). Client use too, for the server's own tools (redis-cli in
 * a health check, which must present a certificate to a Redis that requires one).
 */
export function issueServerCertificate(
  ca: CertificateAuthority,
  name: string,
  hosts: string[] = ['localhost', '127.0.0.1'],
  validDays = 30,
): Promise<{ certPem: string; keyPem: string }> {
  return issueLeaf(ca, `CN=${name}`, hostNames(hosts), validDays);
}

/** An ECDSA P-256 leaf signed by `ca`: TLS server and client use, `names` as its subjectAltName. */
async function issueLeaf(
  ca: CertificateAuthority,
  subject: string,
  names: x509.JsonGeneralName[],
  validDays: number,
): Promise<{ certPem: string; keyPem: string }> {
  const keys = await keyPair();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject,
    issuer: ca.cert.subject,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + validDays * DAY_MS),
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      new x509.SubjectAlternativeNameExtension(names, false),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await keyPem(keys) };
}

/** Writes a server certificate (issueServerCertificate) in cert-manager's layout under <dir>/<name>/. */
export async function writeServerCertificate(
  ca: CertificateAuthority,
  dir: string,
  name: string,
  hosts?: string[],
  validDays?: number,
): Promise<IdentityFiles> {
  return tlsFolderFiles(
    await writeTlsFolder(ca, path.join(dir, name), await issueServerCertificate(ca, name, hosts, validDays)),
  );
}

/**
 * Writes `identity`'s certificate and key (mode 0600) and the CA certificate
 * under `dir`, in cert-manager's layout (tls.crt, tls.key, ca.crt) in a
 * sub-directory per identity: <dir>/<role>-<id>/.
 */
export async function writeIdentity(
  ca: CertificateAuthority,
  dir: string,
  identity: Identity,
  hosts?: string[],
): Promise<IdentityFiles> {
  return tlsFolderFiles(
    await writeIdentityPems(ca, dir, identity, await issueCertificate(ca, identity, hosts)),
  );
}

/** Writes an issued certificate and key (mode 0600) and the CA certificate to <dir>/<role>-<id>/; returns that folder. */
export function writeIdentityPems(
  ca: CertificateAuthority,
  dir: string,
  identity: Identity,
  pems: { certPem: string; keyPem: string },
): Promise<string> {
  return writeTlsFolder(ca, path.join(dir, `${identity.role}-${identity.id}`), pems);
}

/** cert-manager's layout in folder `d`: tls.crt, tls.key (mode 0600), ca.crt; returns `d`. */
async function writeTlsFolder(
  ca: CertificateAuthority,
  d: string,
  pems: { certPem: string; keyPem: string },
): Promise<string> {
  await mkdir(d, { recursive: true, mode: 0o700 });
  await writeFile(path.join(d, 'tls.crt'), pems.certPem);
  await writeFile(path.join(d, 'tls.key'), pems.keyPem, { mode: 0o600 });
  await writeFile(path.join(d, 'ca.crt'), ca.certPem);
  return d;
}

function tlsFolderFiles(d: string): IdentityFiles {
  return {
    certFile: path.join(d, 'tls.crt'),
    keyFile: path.join(d, 'tls.key'),
    caFile: path.join(d, 'ca.crt'),
  };
}

/** The environment a process reads its identity from (see tls-config.ts). */
export function tlsEnv(files: IdentityFiles): Record<string, string> {
  return { TLS_CERT_FILE: files.certFile, TLS_KEY_FILE: files.keyFile, TLS_CA_FILE: files.caFile };
}
