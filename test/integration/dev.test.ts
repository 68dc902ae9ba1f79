import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { createClient } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { pidfilePath } from '../../internal/cli/dev-pidfile.js';
import { HAYSTACK_BIN, PROJECT_ROOT } from '../../internal/cli/processes.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { type DevRun, startDev } from '../helpers/dev-cluster.js';
import { exec, processAlive, tool } from '../helpers/tools.js';

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms (${String(last)})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * `haystack dev` (what `npm start` runs) as a new user meets it: what it prints, its log files,
 * its pidfile, and the seed's signature feature on its 5 stores: a blob read only through the
 * stores (above the gateways' cache limit) gains replicas and cools back.
 */
describe.sequential('haystack dev: the local cluster', () => {
  let dev: DevRun;
  let client: HaystackClient;

  beforeAll(async () => {
    dev = await startDev({
      // Blobs above 1 KiB are never cached: every read is served by a store.
      CACHE_MAX_BLOB_SIZE: '1KiB',
      STATS_REPORT_INTERVAL: '1s',
      HEARTBEAT_INTERVAL: '1s',
      ACCESS_RATE_THRESHOLD: '120',
      HIGH_ACCESS_THRESHOLD: '100000',
      COOL_DOWN_THRESHOLD: '60',
      EWMA_PERIOD: '1s',
      EWMA_ALPHA: '0.5',
      DE_REPLICATION_GRACE_PERIOD: '3s',
      LOG_LEVEL: 'info',
    });
    // The token the dev cluster printed (its own key, not the suite's).
    expect(dev.token).toMatch(/^ey/);
    client = new HaystackClient({ url: `http://127.0.0.1:${dev.ports.envoy}`, token: dev.token });
  });
  afterAll(async () => {
    if (dev && dev.child.exitCode === null) {
      dev.child.kill('SIGTERM');
      await dev.exited;
    }
  });

  it('prints the PATH line for its tools, the URLs, the log folder and how to stop it', () => {
    const out = dev.stdout();
    expect(out).toContain(`export PATH="${path.join(PROJECT_ROOT, 'test/env/bin')}:$PATH"`);
    expect(out).toContain(`http://127.0.0.1:${dev.ports.envoy}/ui/`);
    expect(out).toContain(`${path.join(dev.dataDir, 'logs')}/`);
    expect(out).toContain('haystack dev stop');
    for (const p of dev.ports.stores) expect(out).toContain(`127.0.0.1:${p}`);
  });

  it('writes one log file per process, nothing kept only in memory', async () => {
    const logs = path.join(dev.dataDir, 'logs');
    const names = [
      'directory-0',
      'directory-1',
      'directory-2',
      'store-0',
      'store-1',
      'store-2',
      'store-3',
      'store-4',
      'replication',
      'gateway-0',
      'gateway-1',
      'envoy',
      'redis',
      'redis-cache',
    ].map((n) => `${n}.log`);
    expect(readdirSync(logs).sort()).toEqual(names.sort());
    // Each server's pino lines land in its own file.
    await until(
      'store-4 logs its start',
      async () => (readFileSync(path.join(logs, 'store-4.log'), 'utf8').includes('"msg"') ? true : undefined),
      10_000,
    );
  });

  it('a second start on the same data says "already running (pid …)" and exits non-zero', async () => {
    const r = await exec(process.execPath, [HAYSTACK_BIN, 'dev', '--data', dev.dataDir], {
      env: { ...process.env, ...dev.ports.env },
      timeoutMs: 30_000,
    });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`already running (pid ${dev.child.pid})`);
  });

  it('a blob read only through the stores gains replicas (Stat above 3) and cools back to 3', async () => {
    const data = new Uint8Array(64 * 1024).map((_, i) => (i * 31) % 251);
    const blob = await client.upload(data, { contentType: 'application/octet-stream' });
    expect(blob.replicas).toBe(3);
    let reading = true;
    const reader = (async () => {
      while (reading) {
        const res = await fetch(`http://127.0.0.1:${dev.ports.envoy}/blobs/${blob.id}`, {
          headers: { authorization: `Bearer ${dev.token}` },
        }).catch(() => undefined);
        await res?.arrayBuffer();
      }
    })();
    try {
      const hot = await until(
        'replica count above 3 while hot',
        async () => {
          const s = await client.stat(blob.id);
          return s.replicas > 3 ? s.replicas : undefined;
        },
        120_000,
      );
      expect(hot).toBeGreaterThan(3);
    } finally {
      reading = false;
      await reader;
    }
    await until(
      'back to 3 replicas once cool',
      async () => ((await client.stat(blob.id)).replicas === 3 ? true : undefined),
      120_000,
    );
    // The bytes are intact throughout.
    expect(Buffer.from((await client.download(blob.id)).data).equals(Buffer.from(data))).toBe(true);
  }, 300_000);

  it("`haystack stats --json` shows each store's real volume count and a fresh heartbeat", async () => {
    const since = Date.now();
    const want = new Map<string, number>();
    // Store ports serve mTLS only: the operator certificate `haystack dev` wrote.
    const pki = path.join(dev.dataDir, 'pki', 'admin-dev');
    const nodeOptions = {
      ca: readFileSync(path.join(pki, 'ca.crt')),
      cert: readFileSync(path.join(pki, 'tls.crt')),
      key: readFileSync(path.join(pki, 'tls.key')),
      checkServerIdentity: () => undefined,
    };
    for (const [i, port] of dev.ports.stores.entries()) {
      const s = await createClient(
        StoreService,
        createGrpcTransport({ baseUrl: `https://127.0.0.1:${port}`, nodeOptions }),
      ).getStats({});
      want.set(`store-${i}`, s.volumes.length);
    }
    expect([...want.values()].filter((n) => n >= 1).length).toBeGreaterThanOrEqual(3);
    // Whichever directory answers (Envoy picks one), within a few heartbeats.
    await until(
      'stats with real volume counts and heartbeats after the start of this check',
      async () => {
        const r = await exec(
          process.execPath,
          [HAYSTACK_BIN, '--url', `http://127.0.0.1:${dev.ports.envoy}`, 'stats', '--json'],
          { env: { ...process.env, HAYSTACK_TOKEN: dev.token } },
        );
        const doc = JSON.parse(r.stdout) as {
          stores: { id: string; volumes: number; lastHeartbeatMs: number }[];
        };
        const ok =
          doc.stores.length === 5 &&
          doc.stores.every((st) => st.volumes === want.get(st.id) && st.lastHeartbeatMs >= since);
        return ok ? true : undefined;
      },
      60_000,
    );
  });

  it('serves only TLS on its internal ports: plaintext grpcurl fails on every one; grpcurl with the dev operator certificate and -cacert works', async () => {
    const port = (k: string) => Number(dev.ports.env[k]);
    const internal = [
      ...[0, 1, 2].map((i) => port('DEV_DIRECTORY_PORT') + i),
      ...dev.ports.stores,
      ...[0, 1].map((i) => port('DEV_GATEWAY_PORT') + i),
      port('DEV_REPLICATION_PORT'),
    ].map((p) => `127.0.0.1:${p}`);
    expect(internal.length).toBe(11);
    const pki = path.join(dev.dataDir, 'pki', 'admin-dev');
    const tls = ['-cacert', 'ca.crt', '-cert', 'tls.crt', '-key', 'tls.key'].map((a) =>
      a.startsWith('-') ? a : path.join(pki, a),
    );
    const grpcurl = tool('grpcurl');
    // All probes at once: a plaintext grpcurl against a TLS port retries until its connect
    // timeout, so one after another they took 11 × the timeout (and failed the test under load).
    // grpc-go's warnings name why each attempt failed: a TLS server closes a plaintext
    // connection unanswered ("error reading server preface: EOF", or a reset when it closes
    // with the client's SETTINGS frame unread), unlike a port nobody listens on ("connection
    // refused") or a slow one (only "context deadline exceeded", what grpcurl itself prints).
    const results = await Promise.all(
      internal.map(async (address) => ({
        address,
        plain: await exec(grpcurl, ['-plaintext', '-connect-timeout', '15', address, 'list'], {
          env: { ...process.env, GRPC_GO_LOG_SEVERITY_LEVEL: 'warning' },
          timeoutMs: 60_000,
        }),
        ok: await exec(grpcurl, [...tls, '-connect-timeout', '30', address, 'grpc.health.v1.Health/Check'], {
          timeoutMs: 60_000,
        }),
      })),
    );
    for (const { address, plain, ok } of results) {
      expect(plain.code, address).not.toBe(0);
      expect(plain.stdout, address).not.toContain('haystack.v1');
      expect(plain.stderr, address).toMatch(/error reading server preface: (EOF|.*connection reset by peer)/);
      expect(plain.stderr, address).not.toContain('connection refused');
      expect(ok.code, `${address}: ${ok.stderr}`).toBe(0);
      expect(ok.stdout, address).toContain('SERVING');
    }
  }, 120_000);

  it('`haystack dev stop` (the pidfile) stops every child and the supervisor', async () => {
    const ps = await exec('ps', ['-o', 'pid=', '--ppid', String(dev.child.pid)]);
    const children = ps.stdout
      .split('\n')
      .map((l) => Number(l.trim()))
      .filter((n) => n > 0);
    expect(children.length).toBeGreaterThanOrEqual(14);
    const r = await exec(process.execPath, [HAYSTACK_BIN, 'dev', 'stop', '--data', dev.dataDir], {
      timeoutMs: 90_000,
    });
    expect(r.stdout).toContain(`stopped (pid ${dev.child.pid})`);
    expect(await dev.exited).toBe(0);
    await until(
      'every child gone',
      async () => (children.every((p) => !processAlive(p)) ? true : undefined),
      30_000,
    );
    expect(existsSync(pidfilePath(dev.dataDir))).toBe(false);
  });
});
