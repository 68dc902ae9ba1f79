import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { envReader } from '../config/common.js';
import { parseSize } from '../config/env.js';
import { DEFAULT_DELETE_RATE_LIMIT, DEFAULT_UPLOAD_RATE_LIMIT } from '../edge/envoy-config.js';
import { type EnvoyProcess, startEnvoy } from '../edge/envoy-process.js';
import { buildWeb } from '../edge/web-build.js';
import { type ServerProcess, spawnServer } from './processes.js';
import { findBinary, waitForPort } from './tools.js';

export interface DevOptions {
  dataDir: string;
}

/**
 * `haystack dev`: the whole cluster on this machine, data under ./data, every
 * endpoint printed, Ctrl-C stops everything cleanly; a second start reuses the data.
 */
export async function runDev(opts: DevOptions): Promise<void> {
  const r = envReader();
  const host = r.string('DEV_HOST', '127.0.0.1');
  const dirPorts = [0, 1, 2].map((i) => r.int('DEV_DIRECTORY_PORT', 9000, { min: 1, max: 65533 }) + i);
  const storePorts = [0, 1, 2].map((i) => r.int('DEV_STORE_PORT', 8001, { min: 1, max: 65533 }) + i);
  const gatewayPorts = [0, 1].map((i) => r.int('DEV_GATEWAY_PORT', 8100, { min: 1, max: 65534 }) + i);
  const replicationPort = r.int('DEV_REPLICATION_PORT', 9003, { min: 1, max: 65535 });
  const redisPort = r.int('DEV_REDIS_PORT', 6379, { min: 1, max: 65535 });
  const cacheRedisPort = r.int('DEV_CACHE_REDIS_PORT', 6380, { min: 1, max: 65535 });
  const envoyPort = r.int('DEV_ENVOY_PORT', 8080, { min: 1, max: 65535 });
  const envoyAdminPort = r.int('DEV_ENVOY_ADMIN_PORT', 9901, { min: 1, max: 65535 });
  const corsOrigins = r
    .string('CORS_ORIGINS', '*')
    .split(',')
    .map((o) => o.trim())
    .filter(Boolean);
  r.done();
  const dataDir = path.resolve(opts.dataDir);
  await mkdir(dataDir, { recursive: true });

  const children: ServerProcess[] = [];
  const redisChildren: ChildProcess[] = [];
  let envoy: EnvoyProcess | undefined;
  let stopping = false;
  const stopAll = async () => {
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
    process.stderr.write('cluster stopped\n');
    process.exit(0);
  };
  process.on('SIGINT', () => void stopAll());
  process.on('SIGTERM', () => void stopAll());

  // Two Redis servers, as in deploy/: leases and terms must never be evicted, while
  // the blob cache is an allkeys-lru cache.
  const redisBin = process.env.REDIS_URL ? undefined : findBinary('redis-server');
  const startRedis = async (name: string, port: number, policy: string, maxmemory: string) => {
    if (!redisBin) return '';
    const dir = path.join(dataDir, name);
    await mkdir(dir, { recursive: true });
    const child = spawn(
      redisBin,
      [
        '--bind',
        host,
        '--port',
        String(port),
        '--dir',
        dir,
        '--maxmemory',
        maxmemory,
        '--maxmemory-policy',
        policy,
      ],
      { stdio: 'ignore' },
    );
    redisChildren.push(child);
    await waitForPort(host, port, 10_000);
    return `redis://${host}:${port}`;
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
  const common = { REDIS_URL: redisUrl, LOG_LEVEL: process.env.LOG_LEVEL ?? 'info' };
  const start = async (name: string, args: string[], env: Record<string, string> = {}) => {
    const proc = await spawnServer({
      name,
      args,
      env: { ...common, ...env },
      echo: process.env.DEV_ECHO_LOGS === '1',
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
      DIRECTORY_ADDRS: peers,
    });
    await Promise.all(
      gatewayPorts.map((p, i) =>
        start(`gateway-${i}`, ['gateway', '--listen', `${host}:${p}`], {
          GATEWAY_ID: `gateway-${i}`,
          REDIS_URL: cacheRedisUrl,
          DIRECTORY_ADDRS: peers,
          REPLICATION_ADDRS: `${host}:${replicationPort}`,
          ...(uiDir ? { UI_DIR: uiDir } : {}),
        }),
      ),
    );
    const envoyBin = findBinary('envoy');
    if (envoyBin) {
      const at = (port: number) => ({ host, port });
      envoy = await startEnvoy({
        bin: envoyBin,
        dir: path.join(dataDir, 'envoy'),
        config: {
          listen: at(envoyPort),
          admin: at(envoyAdminPort),
          gateways: gatewayPorts.map(at),
          directories: dirPorts.map(at),
          replication: [at(replicationPort)],
          corsOrigins,
          uploadRateLimit: DEFAULT_UPLOAD_RATE_LIMIT,
          deleteRateLimit: DEFAULT_DELETE_RATE_LIMIT,
          maxUploadBytes: parseSize(process.env.MAX_UPLOAD_SIZE ?? '') ?? 100 * 1024 * 1024,
          accessLogPath: path.join(dataDir, 'envoy', 'access.log'),
        },
      });
      await envoy.waitHealthy('gateways', 1, 30_000);
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
    await stopAll();
    return;
  }

  const lines = [
    '',
    'Haystack local cluster',
    `  data            ${dataDir}`,
    `  redis (leases)  ${redisUrl || '(in-process)'}`,
    `  redis (cache)   ${cacheRedisUrl || '(in-process)'}`,
    ...children.map((c) => `  ${c.name.padEnd(15)} ${c.address}`),
    ...(envoy
      ? [
          `  envoy           ${envoy.address}  (gRPC, gRPC-Web, Connect, /blobs/{id})`,
          `  envoy log       ${path.join(dataDir, 'envoy', 'access.log')}`,
          `  envoy admin     ${envoy.adminUrl}`,
          `  dashboard       http://${envoy.address}/ui/`,
          '',
          `  try: HAYSTACK_URL=http://${envoy.address} npx haystack upload photo.jpg`,
        ]
      : []),
    '',
    'cluster ready (Ctrl-C stops it)',
    '',
  ];
  process.stdout.write(lines.join('\n'));
}
