import { X509Certificate } from 'node:crypto';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientSessionOptions } from '../../../internal/rpc/session.js';
import { type CertificateAuthority, createCa, issueCertificate } from '../../../internal/security/ca.js';
import { checkRenewal } from '../../../internal/security/cert-reload.js';
import type { Identity } from '../../../internal/security/identity.js';
import { redisTls } from '../../../internal/security/redis-tls.js';
import type { TransportSecurity } from '../../../internal/security/tls-config.js';

const STORE: Identity = { role: 'store', id: 'store-1' };
const serial = (pem: string) => new X509Certificate(pem).serialNumber.toUpperCase();

describe('checkRenewal (which changed files a process takes)', () => {
  let ca: CertificateAuthority;
  let otherCa: CertificateAuthority;
  beforeAll(async () => {
    ca = await createCa(1);
    otherCa = await createCa(1);
  });

  it('takes a renewed certificate of the same identity, issued by a CA in the bundle', async () => {
    const next = await issueCertificate(ca, STORE);
    const r = checkRenewal(STORE, { cert: next.certPem, key: next.keyPem, ca: ca.certPem }, Date.now());
    expect(r.ok).toBe(true);
    // During a CA rotation ca.crt holds the old and the new CA.
    const rotated = await issueCertificate(otherCa, STORE);
    const both = `${ca.certPem}\n${otherCa.certPem}`;
    expect(checkRenewal(STORE, { cert: rotated.certPem, key: rotated.keyPem, ca: both }, Date.now()).ok).toBe(
      true,
    );
  });

  it('refuses another identity for good, and a half-written update (key of another certificate) for now', async () => {
    const other = await issueCertificate(ca, { role: 'gateway', id: 'store-1' });
    const r = checkRenewal(STORE, { cert: other.certPem, key: other.keyPem, ca: ca.certPem }, Date.now());
    expect(r).toMatchObject({ ok: false, transient: false });
    expect(!r.ok && r.reason).toMatch(/gateway\/store-1/);
    const a = await issueCertificate(ca, STORE);
    const b = await issueCertificate(ca, STORE);
    expect(checkRenewal(STORE, { cert: a.certPem, key: b.keyPem, ca: ca.certPem }, Date.now())).toMatchObject(
      {
        ok: false,
        transient: true,
      },
    );
  });

  it('refuses a certificate no CA in the bundle issued, and one not valid now', async () => {
    const foreign = await issueCertificate(otherCa, STORE);
    const r = checkRenewal(STORE, { cert: foreign.certPem, key: foreign.keyPem, ca: ca.certPem }, Date.now());
    expect(!r.ok && r.reason).toMatch(/no certificate in the CA file issued it/);
    const next = await issueCertificate(ca, STORE);
    const later = Date.now() + 400 * 86_400_000;
    const expired = checkRenewal(STORE, { cert: next.certPem, key: next.keyPem, ca: ca.certPem }, later);
    expect(expired).toMatchObject({ ok: false, transient: false });
  });
});

describe('the client side of a renewal', () => {
  let ca: CertificateAuthority;
  let server: http2.Http2SecureServer;
  let port = 0;
  const seen: string[] = [];
  beforeAll(async () => {
    ca = await createCa(1);
    const own = await issueCertificate(ca, { role: 'directory', id: 'directory-0' });
    server = http2.createSecureServer({
      cert: own.certPem,
      key: own.keyPem,
      ca: ca.certPem,
      requestCert: true,
      rejectUnauthorized: true,
    });
    server.on('secureConnection', (s: TLSSocket) => {
      seen.push(s.getPeerCertificate().serialNumber.toUpperCase());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
  });

  const connectOnce = (options: http2.SecureClientSessionOptions) =>
    new Promise<void>((resolve, reject) => {
      const s = http2.connect(`https://127.0.0.1:${port}`, options);
      s.once('connect', () => {
        s.close();
        resolve();
      });
      s.once('error', reject);
    });

  it('shows the renewed certificate on every connection made after the security changed in place', async () => {
    const first = await issueCertificate(ca, STORE);
    const security: TransportSecurity = {
      mode: 'mtls',
      cert: first.certPem,
      key: first.keyPem,
      ca: ca.certPem,
      identity: STORE,
      directoryPeerIds: [],
    };
    // Made once, as a transport's session manager keeps them.
    const options = clientSessionOptions(security, ['directory']);
    await connectOnce(options);
    const renewed = await issueCertificate(ca, STORE);
    security.cert = renewed.certPem;
    security.key = renewed.keyPem;
    await connectOnce(options);
    for (let i = 0; i < 100 && seen.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    expect(seen.slice(-2)).toEqual([serial(first.certPem), serial(renewed.certPem)]);
    // Redis's TLS options (ioredis copies them into tls.connect per connection) too.
    expect({ ...redisTls('rediss://127.0.0.1:6380', security) }.cert).toBe(renewed.certPem);
  });
});
