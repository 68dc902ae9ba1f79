import { X509Certificate } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CertificateAuthority, createCa, issueCertificate } from '../../internal/security/ca.js';
import type { Identity } from '../../internal/security/identity.js';
import { freePort } from '../helpers/redis.js';
import { type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const DIRECTORY: Identity = { role: 'directory', id: 'directory-0' };
const ADMIN: Identity = { role: 'admin', id: 'renewal-test' };

/** The serial number of the certificate a TLS server at `address` shows a new connection. */
function servedSerial(address: string, ca: string): Promise<string> {
  const [host, port] = address.split(':') as [string, string];
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port: Number(port),
      ca,
      ALPNProtocols: ['h2'],
      checkServerIdentity: () => undefined,
    });
    socket.once('secureConnect', () => {
      resolve(socket.getPeerCertificate().serialNumber.toUpperCase());
      socket.destroy();
    });
    socket.once('error', reject);
  });
}

function serialOf(pem: string): string {
  return new X509Certificate(pem).serialNumber.toUpperCase();
}

// cert-manager's CSI driver renews a pod's certificate before it expires; a process that
// read its files once at start served the old one until it expired (then every peer
// refused it). TLS_RELOAD_INTERVAL reads them again.
describe('a server process whose certificate files are renewed in place', () => {
  let ca: CertificateAuthority;
  let dir: string;
  let proc: ServerProcess;
  let admin: { certPem: string; keyPem: string };
  const write = (pems: { certPem: string; keyPem: string }) => {
    // The key first, as a half-written update would leave it: the reload must wait for the pair.
    writeFileSync(path.join(dir, 'tls.key'), pems.keyPem, { mode: 0o600 });
    writeFileSync(path.join(dir, 'tls.crt'), pems.certPem);
  };
  const metrics = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const req = https.request(
        {
          host: '127.0.0.1',
          port: Number(proc.address.split(':')[1]),
          path: '/metrics',
          ca: ca.certPem,
          cert: admin.certPem,
          key: admin.keyPem,
          checkServerIdentity: () => undefined,
        },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c) => {
            body += c;
          });
          res.on('end', () => resolve(body));
        },
      );
      req.once('error', reject);
      req.end();
    });
  const waitServed = async (serial: string) => {
    const deadline = Date.now() + 20_000;
    let seen = '';
    while (Date.now() < deadline) {
      seen = await servedSerial(proc.address, ca.certPem);
      if (seen === serial) return seen;
      await sleep(200);
    }
    return seen;
  };

  beforeAll(async () => {
    ca = await createCa(1);
    admin = await issueCertificate(ca, ADMIN);
    dir = tmpName('cert-renewal');
    mkdirSync(dir, { recursive: true });
    write(await issueCertificate(ca, DIRECTORY));
    writeFileSync(path.join(dir, 'ca.crt'), ca.certPem);
    const self = `127.0.0.1:${await freePort()}`;
    proc = await spawnServer({
      name: 'directory-0',
      args: ['directory', '--listen', self, '--data', tmpName('cert-renewal-data')],
      env: {
        TLS_CERT_FILE: path.join(dir, 'tls.crt'),
        TLS_KEY_FILE: path.join(dir, 'tls.key'),
        TLS_CA_FILE: path.join(dir, 'ca.crt'),
        TLS_RELOAD_INTERVAL: '1s',
        DIRECTORY_ID: 'directory-0',
        REDIS_URL: '',
        DIRECTORY_PEERS: self,
        PLACEMENT_GROUPS: '0',
      },
    });
  }, 90_000);
  afterAll(async () => {
    await proc?.stop();
  });

  it('serves the renewed certificate to new connections without a restart, and refuses one of another identity', {
    timeout: 90_000,
  }, async () => {
    const first = await servedSerial(proc.address, ca.certPem);
    const renewed = await issueCertificate(ca, DIRECTORY);
    expect(serialOf(renewed.certPem)).not.toBe(first);
    write(renewed);
    expect(await waitServed(serialOf(renewed.certPem))).toBe(serialOf(renewed.certPem));
    expect(proc.logs()).toContain('TLS certificate renewed');
    const after = await metrics();
    expect(after).toMatch(/haystack_tls_certificate_reloads_total\{result="ok"\} 1\b/);
    const notAfter = Date.parse(new X509Certificate(renewed.certPem).validTo) / 1000;
    expect(after).toContain(`haystack_tls_certificate_expiry_timestamp_seconds ${notAfter}`);

    // A certificate of another identity (a mix-up in the Secret) is not taken.
    const other = await issueCertificate(ca, { role: 'store', id: 'store-1' });
    write(other);
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && !proc.logs().includes('changed TLS certificate files refused'))
      await sleep(200);
    expect(proc.logs()).toMatch(/spiffe:\/\/haystack\/store\/store-1.*changed TLS certificate files refused/);
    expect(await servedSerial(proc.address, ca.certPem)).toBe(serialOf(renewed.certPem));
    expect(await metrics()).toMatch(/haystack_tls_certificate_reloads_total\{result="refused"\} 1\b/);
  });
});
