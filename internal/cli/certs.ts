import { chown, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import type { Identity } from '../security/identity.js';
import { action, out } from './client.js';

/** The uids the images run as: Haystack's (deploy/Dockerfile, USER node) and redis:7-alpine's. */
const HAYSTACK_UID = 1000;
const REDIS_UID = 999;

/** The Redis servers of deploy/docker-compose.yml: TLS server certificates, no mesh identity. */
export const COMPOSE_REDIS = ['redis', 'redis-cache'] as const;

/**
 * Gives a folder and its files to `uid` (the keys are mode 0600: only their owner reads
 * them, and the containers do not run as root). Possible only as root; otherwise says
 * which command to run.
 */
async function giveTo(dir: string, uid: number): Promise<string | undefined> {
  if (process.getuid?.() === uid) return undefined;
  if (process.getuid?.() !== 0) return `chown -R ${uid}:${uid} ${dir}`;
  await chown(dir, uid, uid);
  for (const f of await readdir(dir)) await chown(path.join(dir, f), uid, uid);
  return undefined;
}

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
 * tls.key,ca.crt}; the Redis servers' under <out>/redis and <out>/redis-cache),
 * each folder owned by the uid its container runs as. The CA's key is not written
 * anywhere: rotating is running the command again and restarting every service
 * (docs/security.md).
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
        const { createCa, issueCertificate, writeIdentityPems, writeServerCertificate } = await import(
          '../security/ca.js'
        );
        const ca = await createCa(days);
        const todo: string[] = [];
        for (const { identity, hosts } of composeIdentities()) {
          const pems = await issueCertificate(ca, identity, hosts, days);
          const dir = await writeIdentityPems(ca, flags.out, identity, pems);
          const fix = identity.role === 'admin' ? undefined : await giveTo(dir, HAYSTACK_UID);
          if (fix) todo.push(fix);
          out(`${dir}  spiffe://haystack/${identity.role}/${identity.id}`);
        }
        for (const name of COMPOSE_REDIS) {
          const files = await writeServerCertificate(
            ca,
            flags.out,
            name,
            [name, 'localhost', '127.0.0.1'],
            days,
          );
          const dir = path.dirname(files.certFile);
          const fix = await giveTo(dir, REDIS_UID);
          if (fix) todo.push(fix);
          out(`${dir}  TLS server ${name}`);
        }
        if (todo.length > 0) {
          out('the containers do not run as you: give them their keys (or run this as root):');
          for (const t of todo) out(`  ${t}`);
        }
        out(
          `valid ${days} days; the CA key was not kept: to rotate, run this again and restart every service`,
        );
      }),
    );
}
