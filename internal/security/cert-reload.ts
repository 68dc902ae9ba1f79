import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { describeIdentity, type Identity, identityOfCertificate } from './identity.js';
import type { TransportSecurity } from './tls-config.js';

/** The three PEMs a process serves and dials with. */
export interface MeshPems {
  cert: string;
  key: string;
  ca: string;
}

export type RenewalCheck =
  | { ok: true; notAfter: Date; serial: string }
  | { ok: false; reason: string; transient: boolean };

/** Every certificate in a PEM bundle (ca.crt may hold the old and the new CA during a rotation). */
function certificatesOf(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((b) => new X509Certificate(b));
}

/**
 * Whether `next` may replace the PEMs of a process whose identity is `identity`
 * (pure but for the clock `nowMs`): the certificate parses and names the same
 * identity (a renewal, never a change of role or id), the key is the
 * certificate's, a certificate in `ca` issued and signed it, and it is valid now.
 * `transient` marks what a half-written update explains (a key of another
 * certificate: cert-manager writes the files one by one; read again later).
 */
export function checkRenewal(identity: Identity, next: MeshPems, nowMs: number): RenewalCheck {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(next.cert);
  } catch (err) {
    return {
      ok: false,
      reason: `the certificate does not parse (${(err as Error).message})`,
      transient: true,
    };
  }
  const named = identityOfCertificate(cert);
  if (!named || named.role !== identity.role || named.id !== identity.id) {
    return {
      ok: false,
      reason: `the certificate is for ${describeIdentity(named)}, this process is ${describeIdentity(identity)}`,
      transient: false,
    };
  }
  try {
    if (!cert.checkPrivateKey(createPrivateKey(next.key))) {
      return { ok: false, reason: 'the key is not the certificate’s', transient: true };
    }
  } catch (err) {
    return { ok: false, reason: `the key does not parse (${(err as Error).message})`, transient: true };
  }
  let cas: X509Certificate[];
  try {
    cas = certificatesOf(next.ca);
  } catch (err) {
    return { ok: false, reason: `the CA file does not parse (${(err as Error).message})`, transient: true };
  }
  if (!cas.some((c) => cert.checkIssued(c) && cert.verify(c.publicKey))) {
    return { ok: false, reason: 'no certificate in the CA file issued it', transient: true };
  }
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  if (nowMs < from || nowMs > to) {
    return {
      ok: false,
      reason: `it is not valid now (${cert.validFrom} – ${cert.validTo})`,
      transient: false,
    };
  }
  return { ok: true, notAfter: new Date(to), serial: cert.serialNumber };
}

export interface CertificateReloadEvents {
  /** The PEMs changed (already set on the security): apply them to what serves. */
  onReload(pems: MeshPems, info: { notAfter: Date; serial: string }): void;
  /** A changed set of files was refused; the process keeps the certificate it has. */
  onRefused(reason: string): void;
}

/**
 * Reads a process's certificate files every `security.reload.intervalMs` and, when
 * they changed and `checkRenewal` accepts them, puts the new PEMs on `security` in
 * place (the client session options and Redis's TLS options read them there for
 * every new connection: rpc/session.ts, redis-tls.ts) and calls `onReload` (the
 * listener: setSecureContext). Connections already open keep the certificate they
 * were made with. Why: cert-manager's CSI driver renews a pod's certificate before
 * it expires, and a process that read it once at start would serve the expired one.
 * Returns a stop function; a no-op without files or with interval 0.
 */
export function startCertificateReload(
  security: TransportSecurity,
  events: CertificateReloadEvents,
  nowMs: () => number = Date.now,
): () => void {
  if (security.mode !== 'mtls' || !security.reload || security.reload.intervalMs <= 0) return () => {};
  const files = security.reload;
  let refusedFor = '';
  let pendingSince = 0;
  let running = false;
  const poll = async () => {
    if (running) return;
    running = true;
    try {
      const [cert, key, ca] = await Promise.all([
        readFile(files.certFile, 'utf8'),
        readFile(files.keyFile, 'utf8'),
        readFile(files.caFile, 'utf8'),
      ]);
      if (cert === security.cert && key === security.key && ca === security.ca) {
        refusedFor = '';
        pendingSince = 0;
        return;
      }
      const check = checkRenewal(security.identity, { cert, key, ca }, nowMs());
      if (check.ok) {
        security.cert = cert;
        security.key = key;
        security.ca = ca;
        refusedFor = '';
        pendingSince = 0;
        events.onReload({ cert, key, ca }, { notAfter: check.notAfter, serial: check.serial });
        return;
      }
      // A half-written update gets one more interval before it is reported.
      if (check.transient && pendingSince === 0) {
        pendingSince = nowMs();
        return;
      }
      const seen = `${cert}\0${key}\0${ca}`;
      if (seen !== refusedFor) {
        refusedFor = seen;
        events.onRefused(check.reason);
      }
    } catch (err) {
      const reason = `cannot read the files (${(err as Error).message})`;
      if (reason !== refusedFor) {
        refusedFor = reason;
        events.onRefused(reason);
      }
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void poll(), files.intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
