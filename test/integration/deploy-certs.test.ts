import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../internal/cli/processes.js';
import { identityOfCertificate, spiffeId } from '../../internal/security/identity.js';
import { exec, tmpName } from '../helpers/tools.js';

interface ComposeService {
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
}

/** deploy/docker-compose.yml as compose sees it (anchors and merge keys resolved by PyYAML). */
async function compose(): Promise<Record<string, ComposeService>> {
  const script = 'import sys, yaml, json\nprint(json.dumps(yaml.safe_load(open(sys.argv[1]))))';
  const res = await exec('python3', ['-c', script, path.join(PROJECT_ROOT, 'deploy/docker-compose.yml')]);
  if (res.code !== 0) throw new Error(res.stderr);
  return (JSON.parse(res.stdout) as { services: Record<string, ComposeService> }).services;
}

/** The identity each compose service must present: its role is its command, its id from its env. */
function expectedIdentity(name: string, s: ComposeService): string {
  const role = s.command?.[0] === 'envoy' ? 'envoy' : s.command?.[0];
  const id =
    role === 'store'
      ? s.environment?.STORE_ID
      : role === 'directory'
        ? s.environment?.DIRECTORY_ID
        : role === 'replication'
          ? 'replication-0'
          : name;
  return `spiffe://haystack/${role}/${id}`;
}

describe('deploy/docker-compose.yml: `haystack certs compose` issues the identities it mounts', () => {
  it('every ./pki mount gets tls.crt (naming that service), tls.key (0600) and ca.crt that signed it', async () => {
    const out = tmpName('compose-pki');
    const res = await exec(process.execPath, ['dist/cmd/haystack.js', 'certs', 'compose', '--out', out]);
    expect(res.code, res.stderr).toBe(0);

    const services = await compose();
    const mounted = Object.entries(services).flatMap(([name, s]) =>
      (s.volumes ?? [])
        .filter((v) => v.startsWith('./pki/'))
        .map((v) => ({ name, s, dir: path.join(out, v.split(':')[0]!.slice('./pki/'.length)) })),
    );
    // directories 3, stores 5, replication, gateway, envoy; the two Redis servers
    expect(mounted.length).toBe(13);
    for (const { name, s, dir } of mounted) {
      const cert = new X509Certificate(readFileSync(path.join(dir, 'tls.crt')));
      const ca = new X509Certificate(readFileSync(path.join(dir, 'ca.crt')));
      const id = identityOfCertificate(cert);
      const key = statSync(path.join(dir, 'tls.key'));
      if (s.command?.[0] === 'redis-server') {
        // A TLS server certificate for the service's host name, no mesh identity; owned
        // by the redis image's uid (999) when the command could give it (run as root).
        expect(id, name).toBeUndefined();
        expect(cert.subjectAltName, name).toContain(`DNS:${name}`);
        expect(s.command, name).toContain('--tls-auth-clients');
        if (process.getuid?.() === 0) expect(key.uid, name).toBe(999);
      } else {
        expect(id && spiffeId(id), name).toBe(expectedIdentity(name, s));
        if (process.getuid?.() === 0) expect(key.uid, name).toBe(1000);
      }
      expect(cert.verify(ca.publicKey), name).toBe(true);
      expect(key.mode & 0o777, name).toBe(0o600);
      expect(new Date(cert.validTo).getTime() - Date.now(), name).toBeGreaterThan(364 * 86_400_000);
    }
    // Every service reaches Redis over TLS.
    for (const [name, s] of Object.entries(services)) {
      const url = s.environment?.REDIS_URL;
      if (url) expect(url, name).toMatch(/^rediss:\/\//);
    }
    // and an operator's identity for grpcurl and the CLI
    const admin = new X509Certificate(readFileSync(path.join(out, 'admin-operator', 'tls.crt')));
    expect(spiffeId(identityOfCertificate(admin)!)).toBe('spiffe://haystack/admin/operator');
  });

  it('refuses a validity that is not a whole number of days from 1 to 3650, naming the flag', async () => {
    const res = await exec(process.execPath, [
      'dist/cmd/haystack.js',
      'certs',
      'compose',
      '--out',
      tmpName('compose-pki-bad'),
      '--days',
      '0',
    ]);
    expect(res.code).not.toBe(0);
    expect(res.stderr).toContain('--days 0');
  });
});
