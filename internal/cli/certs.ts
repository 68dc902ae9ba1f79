import type { Command } from 'commander';
import type { Identity } from '../security/identity.js';
import { action, out } from './client.js';

/**
 * The identities of deploy/docker-compose.yml and the host names its services reach
 * each other by (the service names), plus an operator's for grpcurl and the CLI.
 */
export function composeIdentities(): Array<{ identity: Identity; hosts: string[] }> {
  const at = (role: Identity['role'], id: string, host: string) => ({
    identity: { role, id },
    hosts: [host, 'localhost', '127.0.0.1'],
  });
  return [
    ...[0, 1, 2].map((i) => at('directory', `directory-${i}`, `directory-${i}`)),
    ...[0, 1, 2, 3, 4].map((i) => at('store', `store-${i}`, `store-${i}`)),
    at('replication', 'replication-0', 'replication'),
    at('gateway', 'gateway', 'gateway'),
    at('envoy', 'envoy', 'envoy'),
    at('admin', 'operator', 'localhost'),
  ];
}

/**
 * `haystack certs compose`: a new CA and a certificate per service of
 * deploy/docker-compose.yml, in the layout it mounts (<out>/<role>-<id>/{tls.crt,
 * tls.key,ca.crt}). The CA's key is not written anywhere: rotating is running the
 * command again and restarting every service (docs/security.md).
 */
export function registerCertsCommands(program: Command): void {
  const certs = program.command('certs').description('certificates for the mesh (mTLS identities)');
  certs
    .command('compose')
    .description('a new CA and one certificate per docker-compose service, under --out')
    .option('--out <dir>', 'where to write them (deploy/docker-compose.yml mounts deploy/pki)', 'deploy/pki')
    .option('--days <n>', 'validity of the CA and the certificates, in days', '365')
    .action(
      action(async (opts) => {
        const flags = opts as unknown as { out: string; days: string };
        const days = Number(flags.days);
        if (!Number.isInteger(days) || days < 1 || days > 3650) {
          throw Object.assign(
            new Error(`--days ${flags.days}: expected a whole number of days from 1 to 3650`),
            {
              code: 'EINVAL',
            },
          );
        }
        const { createCa, issueCertificate, writeIdentityPems } = await import('../security/ca.js');
        const ca = await createCa(days);
        for (const { identity, hosts } of composeIdentities()) {
          const pems = await issueCertificate(ca, identity, hosts, days);
          const dir = await writeIdentityPems(ca, flags.out, identity, pems);
          out(`${dir}  spiffe://haystack/${identity.role}/${identity.id}`);
        }
        out(
          `valid ${days} days; the CA key was not kept: to rotate, run this again and restart every service`,
        );
      }),
    );
}
