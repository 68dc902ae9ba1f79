import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { envReader } from '../config/common.js';
import { parseSize } from '../config/env.js';
import { GATEWAYS_HTTP1 } from '../edge/envoy-clusters.js';
import { type EnvoyProcess, startEnvoy } from '../edge/envoy-process.js';
import { readRateLimits } from '../edge/rate-limit-spec.js';
import { buildWeb } from '../edge/web-build.js';
import { newRedisUser, redisAclArgs, redisUrl as userRedisUrl } from '../security/redis-acl.js';
import { redisTlsServerArgs } from '../security/redis-tls.js';
import { devAuth } from './dev-auth.js';
import { devKek } from './dev-kek.js';
import { claimPidfile, DevAlreadyRunning, pidfilePath, releasePidfile } from './dev-pidfile.js';
import { PROJECT_ROOT, type ServerProcess, spawnServer } from './processes.js';
import { findBinary, waitForPort } from './tools.js';

export interface DevOptions {
  dataDir: string;
}

/** Stores in the dev cluster: the seed's 5, so a hot blob has room to gain replicas (max 5). */
export const DEV_STORES = 5;

/**
 * A fresh throwaway CA for this run and a certificate per process (and one for
 * the operator), under <data>/pki in cert-manager's layout. Loaded on demand:
 * only `haystack dev` needs the certificate library.
 */
async function devPki(dir: string, host: string) {
  const { createCa, tlsEnv, writeIdentity, writeServerCertificate } = await import('../security/ca.js');
  const ca = await createCa(30);
  const hosts = [...new Set(['localhost', '127.0.0.1', host])];
  type Id = Parameters<typeof writeIdentity>[2];
  const files = (id: Id) => writeIdentity(ca, dir, id, hosts);
  return {
    files,
    env: async (id: Id) => tlsEnv(await files(id)),
    admin: await files({ role: 'admin', id: 'dev' }),
    /** A TLS server certificate for one of dev's Redis servers (no mesh identity). */
    server: (name: string) => writeServerCertificate(ca, dir, name, hosts),
  };
}

/**
 * `haystack dev`: the whole cluster on this machine, data under ./data, one log file per
 * process under ./data/logs, every endpoint printed. Ctrl-C, SIGTERM or `haystack dev stop`
 * (the pidfile) stop every child; a second start on the same data exits 3 "already running (pid …)";
 * a later start reuses the data.
 */
export async function runDev(opts: DevOptions): Promise<void> {
  const r = envReader();
  const host = r.string('DEV_HOST', '127.0.0.1');
  const dirPorts = [0, 1, 2].map((i) => r.int('DEV_DIRECTORY_PORT', 9000, { min: 1, max: 65533 }) + i);
  const storePorts = Array.from(
    { length: DEV_STORES },
    (_, i) => r.int('DEV_STORE_PORT', 8001, { min: 1, max: 65535 - DEV_STORES }) + i,
  );
  const gatewayPorts = [0, 1].map((i) => r.int('DEV_GATEWAY_PORT', 8100, { min: 1, max: 65534 }) + i);
  const replicationPort = r.int('DEV_REPLICATION_PORT', 9003, { min: 1, max: 65535 });
  const redisPort = r.int('DEV_REDIS_PORT', 6379, { min: 1, max: 65535 });
  const cacheRedisPort = r.int('DEV_CACHE_REDIS_PORT', 6380, { min: 1, max: 65535 });
  const envoyPort = r.int('DEV_ENVOY_PORT', 8080, { min: 1, max: 65535 });
  const envoyAdminPort = r.int('DEV_ENVOY_ADMIN_PORT', 9901, { min: 1, max: 65535 });
  // The dashboard is served by Envoy itself (same origin): no other origin unless listed.
  const corsOrigins = r
    .matching(
      'CORS_ORIGINS',
      '',
      /^(https?:\/\/[A-Za-z0-9.-]+(:\d{1,5})?)?(,\s*https?:\/\/[A-Za-z0-9.-]+(:\d{1,5})?)*$/,
      'comma-separated exact origins like http://localhost:5173 ("*" is not allowed)',
    )
    .split(',')
    .map((o) => o.trim())
    .filter(Boolean);
  // Per-client limits at the edge (EDGE_UPLOAD_RATE_LIMIT, EDGE_DELETE_RATE_LIMIT, EDGE_READ_RATE_LIMIT).
  const rateLimits = readRateLimits(r);
  r.done();
  const dataDir = path.resolve(opts.dataDir);
  const logDir = path.join(dataDir, 'logs');
  await mkdir(logDir, { recursive: true });
  try {
    await claimPidfile(dataDir);
  } catch (err) {
    process.stderr.write(`haystack dev: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(err instanceof DevAlreadyRunning ? 3 : 1);
  }
  const plaintext = process.env.INSECURE_PLAINTEXT === '1';
  const pki = plaintext ? undefined : await devPki(path.join(dataDir, 'pki'), host);

  const children: ServerProcess[] = [];
  const redisChildren: ChildProcess[] = [];
  let envoy: EnvoyProcess | undefined;
  let stopping = false;
  const stopAll = async (code = 0) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write('\nstopping the cluster...\n');
    await envoy?.stop();
    // Clients first, then the services they depend on.
    await Promise.all(children.filter((c) => c.name.startsWith('gateway')).map((c) => c.stop()));
    await Promise.all(children.filter((c) => !c.name.startsWith('gateway')).map((c) => c.stop()));
    await Promise.all(
      redisChildren
        .filter((c) => c.exitCode === null)
        .map((c) => {
          c.kill('SIGTERM');
          return new Promise((res) => c.once('exit', res));
        }),
    );
    await releasePidfile(dataDir);
    process.stderr.write('cluster stopped\n');
    process.exit(code);
  };
  process.on('SIGINT', () => void stopAll());
  process.on('SIGTERM', () => void stopAll());
  process.on('SIGHUP', () => void stopAll());
  // Whoever started us (npm, a shell) is gone, e.g. killed without passing the signal on:
  // we were re-parented, so stop rather than leave servers running with nobody to stop them.
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) void stopAll();
  }, 500).unref();

  // Two Redis servers, as in deploy/: leases and terms must never be evicted, while
  // the blob cache is an allkeys-lru cache.
  const redisBin = process.env.REDIS_URL ? undefined : findBinary('redis-server');
  const startRedis = async (name: string, port: number, policy: string, maxmemory: string) => {
    if (!redisBin) return '';
    // An ACL user with a fresh password per run; the passwordless default user is off.
    const user = newRedisUser(`haystack-${name}`);
    const dir = path.join(dataDir, name);
    await mkdir(dir, { recursive: true });
    // TLS only, client certificates from dev's CA, when the mesh runs mTLS.
    const listen = pki
      ? redisTlsServerArgs(port, await pki.server(`redis-server-${name}`))
      : ['--port', String(port)];
    const child = spawn(
      redisBin,
      [
        '--bind',
        host,
        ...listen,
        '--dir',
        dir,
        '--maxmemory',
        maxmemory,
        '--maxmemory-policy',
        policy,
        '--logfile',
        path.join(logDir, `${name}.log`),
        ...redisAclArgs(user),
      ],
      { stdio: 'ignore' },
    );
    redisChildren.push(child);
    await waitForPort(host, port, 10_000);
    return userRedisUrl(user, host, port, pki !== undefined);
  };
  let redisUrl = process.env.REDIS_URL ?? '';
  let cacheRedisUrl = process.env.CACHE_REDIS_URL ?? redisUrl;
  if (!redisUrl) {
    if (redisBin) {
      redisUrl = await startRedis('redis', redisPort, 'noeviction', '64mb');
      cacheRedisUrl = await startRedis('redis-cache', cacheRedisPort, 'allkeys-lru', '512mb');
    } else {
      process.stderr.write(
        'warning: redis-server not found and REDIS_URL not set: leases and cache run in-process\n',
      );
    }
  }

  const peers = dirPorts.map((p) => `${host}:${p}`).join(',');
  const cacheKey = randomBytes(32).toString('hex');
  const auth = await devAuth(path.join(dataDir, 'auth'));
  // Volumes are encrypted at rest with a throwaway KEK kept beside them.
  const kekFile = await devKek(path.join(dataDir, 'keys'));
  const common = {
    REDIS_URL: redisUrl,
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'info',
    // Only these directory identities may make log peer calls (GetLogState, AckMetadata...).
    DIRECTORY_PEER_IDS: dirPorts.map((_, i) => `directory-${i}`).join(','),
  };
  const start = async (name: string, args: string[], env: Record<string, string> = {}) => {
    const role = args[0] as 'directory' | 'store' | 'gateway' | 'replication';
    const id = env.DIRECTORY_ID ?? env.STORE_ID ?? env.GATEWAY_ID ?? env.MANAGER_ID ?? name;
    const proc = await spawnServer({
      name,
      args,
      env: { ...common, ...(pki ? await pki.env({ role, id }) : { INSECURE_PLAINTEXT: '1' }), ...env },
      logFile: path.join(logDir, `${name}.log`),
    });
    children.push(proc);
    void proc.exited.then((code) => {
      if (!stopping) process.stderr.write(`${name} exited (${code})\n`);
    });
    return proc;
  };

  try {
    await Promise.all(
      dirPorts.map((p, i) =>
        start(
          `directory-${i}`,
          ['directory', '--listen', `${host}:${p}`, '--data', path.join(dataDir, `directory-${i}`)],
          {
            DIRECTORY_ID: `directory-${i}`,
            DIRECTORY_PEERS: peers,
          },
        ),
      ),
    );
    await Promise.all(
      storePorts.map((p, i) =>
        start(
          `store-${i}`,
          ['store', '--listen', `${host}:${p}`, '--data', path.join(dataDir, `store-${i}`)],
          {
            STORE_ID: `store-${i}`,
            DIRECTORY_ADDRS: peers,
            KEK_FILE: kekFile,
            // Reads the store serves itself (cache misses, blobs above the cache limit) and
            // scrub corruption reach the replication manager.
            REPLICATION_ADDRS: `${host}:${replicationPort}`,
          },
        ),
      ),
    );
    // The dashboard, served by the gateways under /ui/ (behind Envoy).
    let uiDir = '';
    try {
      uiDir = await buildWeb(path.join(dataDir, 'web'));
    } catch (err) {
      process.stderr.write(
        `warning: dashboard not built: ${err instanceof Error ? err.message : String(err)}\n`,
      );
    }
    await start('replication', ['replication', '--listen', `${host}:${replicationPort}`], {
      MANAGER_ID: 'replication',
      DIRECTORY_ADDRS: peers,
    });
    await Promise.all(
      gatewayPorts.map((p, i) =>
        start(`gateway-${i}`, ['gateway', '--listen', `${host}:${p}`], {
          GATEWAY_ID: `gateway-${i}`,
          REDIS_URL: cacheRedisUrl,
          // Every gateway MACs cache entries with this key; Redis never sees it.
          CACHE_INTEGRITY_KEY: cacheKey,
          DIRECTORY_ADDRS: peers,
          REPLICATION_ADDRS: `${host}:${replicationPort}`,
          ...(uiDir ? { UI_DIR: uiDir } : {}),
          // Bearer tokens of this run's key; signed URLs valid on either gateway.
          ...auth.gatewayEnv,
        }),
      ),
    );
    const envoyBin = findBinary('envoy');
    if (envoyBin) {
      const at = (port: number) => ({ host, port });
      envoy = await startEnvoy({
        bin: envoyBin,
        dir: path.join(dataDir, 'envoy'),
        logFile: path.join(logDir, 'envoy.log'),
        config: {
          listen: at(envoyPort),
          admin: at(envoyAdminPort),
          gateways: gatewayPorts.map(at),
          directories: dirPorts.map(at),
          replication: [at(replicationPort)],
          corsOrigins,
          // Tokens checked at the edge too (JWKS fetched from the gateways).
          auth: {},
          ...rateLimits,
          maxUploadBytes: parseSize(process.env.MAX_UPLOAD_SIZE ?? '') ?? 100 * 1024 * 1024,
          accessLogPath: path.join(dataDir, 'envoy', 'access.log'),
          ...(pki ? { upstreamTls: await pki.files({ role: 'envoy', id: 'envoy' }) } : {}),
        },
      });
      await envoy.waitHealthy('gateways', 1, 30_000);
      await envoy.waitHealthy(GATEWAYS_HTTP1, 1, 30_000);
      void envoy.exited.then((code) => {
        if (!stopping) process.stderr.write(`envoy exited (${code})\n`);
      });
    } else {
      process.stderr.write(
        'warning: envoy not found (test/env/bootstrap.sh envoy installs it): no edge proxy\n',
      );
    }
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    await stopAll(1);
    return;
  }

  const binDir = path.join(PROJECT_ROOT, 'test/env/bin');
  const lines = [
    '',
    'Haystack local cluster',
    `  data            ${dataDir}`,
    `  logs            ${logDir}/  (one file per process: <name>.log)`,
    `  redis (leases)  ${redactUrl(redisUrl) || '(in-process)'}`,
    `  redis (cache)   ${redactUrl(cacheRedisUrl) || '(in-process)'}`,
    ...[...children]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((c) => `  ${c.name.padEnd(15)} ${c.address}`),
    ...(envoy
      ? [
          `  envoy           ${envoy.address}  (gRPC, gRPC-Web, Connect, /blobs/{id})`,
          `  envoy log       ${path.join(dataDir, 'envoy', 'access.log')}`,
          `  envoy admin     ${envoy.adminUrl}`,
          `  dashboard       http://${envoy.address}/ui/#token=${auth.adminToken}`,
          `  metrics         ${pki ? 'https' : 'http'}://${children.find((c) => c.name === 'gateway-0')?.address ?? ''}/metrics (every process)`,
        ]
      : []),
    ...(pki
      ? [
          '',
          '  internal ports serve mTLS only; an operator certificate (role admin):',
          `    export HAYSTACK_TLS_CERT=${pki.admin.certFile} HAYSTACK_TLS_KEY=${pki.admin.keyFile} HAYSTACK_TLS_CA=${pki.admin.caFile}`,
          `    grpcurl -cacert ${pki.admin.caFile} -cert ${pki.admin.certFile} -key ${pki.admin.keyFile} ${host}:${dirPorts[0]} list`,
        ]
      : ['', '  INSECURE_PLAINTEXT=1: no TLS, no identities, no authorization']),
    '',
    'Access: every public call needs a token (docs/security.md, "Public access"). A dev admin token (12 h):',
    `  export HAYSTACK_TOKEN=${auth.adminToken}`,
    `  more: HAYSTACK_SIGNING_KEY_FILE=${auth.signingKeyFile} npx haystack token create --scope blob:read --prefix user1- --ttl 1h`,
    '',
    'Tools (grpcurl, envoy, redis-server) for this shell:',
    `  export PATH="${binDir}${path.delimiter}$PATH"`,
    ...(envoy
      ? [
          `  try: HAYSTACK_URL=http://${envoy.address} npx haystack upload photo.jpg   (with HAYSTACK_TOKEN set)`,
          `       curl -H "authorization: Bearer $HAYSTACK_TOKEN" http://${envoy.address}/blobs/<id>`,
        ]
      : []),
    '',
    `cluster ready (pid ${process.pid}). Stop it with Ctrl-C, \`kill ${process.pid}\` or \`npx haystack dev stop${opts.dataDir === './data' ? '' : ` --data ${opts.dataDir}`}\` (pidfile ${pidfilePath(dataDir)})`,
    '',
  ];
  process.stdout.write(lines.join('\n'));
}

/** A Redis URL without its password, for printing. */
function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
}
