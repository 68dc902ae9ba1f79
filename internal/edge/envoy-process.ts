import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { killOnExit } from '../common/child-reaper.js';
import { type EnvoyOptions, renderEnvoyConfig } from './envoy-config.js';
import { toYaml } from './envoy-json.js';

export interface EnvoyProcess {
  child: ChildProcess;
  /** Public address, host:port. */
  address: string;
  /** Admin base URL. */
  adminUrl: string;
  configPath: string;
  /** stdout (the access log) and stderr so far. */
  logs(): string;
  /** Number of hosts of a cluster the health checker has seen SERVING. */
  healthyHosts(cluster: string): Promise<number>;
  /** Waits until a cluster has at least n healthy hosts. */
  waitHealthy(cluster: string, n: number, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
  exited: Promise<number | string | null>;
}

/**
 * Renders the config into `dir`, starts the real Envoy binary on it and waits
 * until it is ready (clusters initialized).
 */
export async function startEnvoy(opts: {
  bin: string;
  dir: string;
  config: EnvoyOptions;
  concurrency?: number;
  logLevel?: string;
  /** How long to wait for Envoy's admin /ready (ms; default 60 s, for a loaded box). */
  readyTimeoutMs?: number;
  /** Append Envoy's own log (stderr) to this file as well. */
  logFile?: string;
}): Promise<EnvoyProcess> {
  await mkdir(opts.dir, { recursive: true });
  const configPath = path.join(opts.dir, 'envoy.yaml');
  await writeFile(configPath, `${toYaml(renderEnvoyConfig(opts.config))}\n`);
  const child = spawn(
    opts.bin,
    [
      '-c',
      configPath,
      '--disable-hot-restart',
      '--concurrency',
      String(opts.concurrency ?? 2),
      '--log-level',
      opts.logLevel ?? 'warn',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  killOnExit(child);
  let logs = '';
  const file = opts.logFile ? createWriteStream(opts.logFile, { flags: 'a' }) : undefined;
  child.once('exit', () => file?.end());
  child.stderr?.on('data', (d: Buffer) => file?.write(d));
  const keep = (d: Buffer) => {
    logs += d.toString();
    if (logs.length > 2_000_000) logs = logs.slice(-1_000_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<number | string | null>((resolve) =>
    child.once('exit', (c, s) => resolve(c ?? s)),
  );
  const adminUrl = `http://${opts.config.admin.host}:${opts.config.admin.port}`;
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 60_000);
  let exitCode: number | string | null | undefined;
  void exited.then((c) => {
    exitCode = c;
  });
  for (;;) {
    if (exitCode !== undefined)
      throw new Error(`envoy exited (${exitCode}) before it was ready:\n${logs.slice(-4000)}`);
    const ready = await fetch(`${adminUrl}/ready`)
      .then((r) => r.ok)
      .catch(() => false);
    if (ready) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`envoy was not ready in time:\n${logs.slice(-4000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const healthyHosts = async (cluster: string) => {
    const res = await fetch(`${adminUrl}/clusters?format=json`);
    const body = (await res.json()) as {
      cluster_statuses?: Array<{
        name: string;
        host_statuses?: Array<{ health_status?: Record<string, unknown> }>;
      }>;
    };
    const c = body.cluster_statuses?.find((x) => x.name === cluster);
    return (c?.host_statuses ?? []).filter((h) => {
      const hs = h.health_status ?? {};
      return hs.eds_health_status === 'HEALTHY' && !hs.failed_active_health_check && !hs.failed_outlier_check;
    }).length;
  };
  return {
    child,
    address: `${opts.config.listen.host}:${opts.config.listen.port}`,
    adminUrl,
    configPath,
    logs: () => logs,
    healthyHosts,
    async waitHealthy(cluster, n, timeoutMs = 20_000) {
      const end = Date.now() + timeoutMs;
      while ((await healthyHosts(cluster).catch(() => 0)) < n) {
        if (Date.now() > end) throw new Error(`envoy cluster ${cluster} has fewer than ${n} healthy hosts`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
    },
    exited,
  };
}
