import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deployEnvoyOptions } from '../../internal/edge/deploy-config.js';
import { type EnvoyProcess, startEnvoy } from '../../internal/edge/envoy-process.js';
import {
  DEFAULT_DELETE_RATE_LIMIT,
  DEFAULT_UPLOAD_RATE_LIMIT,
} from '../../internal/edge/envoy-rate-limit.js';
import { createCa, writeIdentity } from '../../internal/security/ca.js';
import type { Role } from '../../internal/security/identity.js';
import { createLogger } from '../../internal/server/logger.js';
import { startServer } from '../../internal/server/server.js';
import { freePort } from '../helpers/redis.js';
import { exec, tmpName, tool } from '../helpers/tools.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const OBS = path.join(ROOT, 'deploy/observability');

/** YAML documents of a file as JSON (PyYAML; python3 is on every machine the bootstrap runs on). */
async function loadYaml(file: string): Promise<unknown[]> {
  const script = 'import sys, yaml, json\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))';
  const res = await exec('python3', ['-c', script, file]);
  expect(res.code, res.stderr).toBe(0);
  return JSON.parse(res.stdout) as unknown[];
}

/** Writes `spec` of the PrometheusRule as a plain rule file (and the promtool tests beside it). */
async function plainRules(): Promise<string> {
  const dir = tmpName('rules');
  mkdirSync(dir, { recursive: true });
  const [rule] = (await loadYaml(path.join(OBS, 'prometheusrule.yaml'))) as [{ kind: string; spec: unknown }];
  expect(rule.kind).toBe('PrometheusRule');
  writeFileSync(path.join(dir, 'rules.yaml'), JSON.stringify(rule.spec)); // JSON is YAML
  writeFileSync(path.join(dir, 'alerts.test.yaml'), readFileSync(path.join(OBS, 'alerts.test.yaml')));
  return dir;
}

interface ServiceMonitor {
  kind: string;
  spec: {
    selector: { matchLabels: Record<string, string> };
    endpoints: {
      port: string;
      path: string;
      scheme?: string;
      tlsConfig?: { ca?: unknown; serverName?: string };
    }[];
  };
}

async function serviceMonitors(): Promise<ServiceMonitor[]> {
  const docs = (await loadYaml(path.join(OBS, 'servicemonitor.yaml'))) as ServiceMonitor[];
  for (const d of docs) expect(d.kind).toBe('ServiceMonitor');
  return docs;
}

/** The DNS SANs deploy/kubernetes/<component>.yaml has cert-manager's CSI driver put in a pod's certificate. */
function dnsSans(component: string, pod: string): string[] {
  const manifest = readFileSync(path.join(ROOT, 'deploy/kubernetes', `${component}.yaml`), 'utf8');
  const names = /csi\.cert-manager\.io\/dns-names: "([^"]+)"/.exec(manifest)?.[1];
  expect(names, component).toBeDefined();
  // The CSI driver substitutes ${POD_NAME} (literal in the manifest).
  return names!.replaceAll(['$', '{POD_NAME}'].join(''), pod).split(',');
}

interface Panel {
  title: string;
  type: string;
  targets?: { expr: string }[];
}

function dashboards(): { file: string; uid: string; panels: Panel[] }[] {
  const dir = path.join(OBS, 'dashboards');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => ({
      file: f,
      ...(JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as { uid: string; panels: Panel[] }),
    }));
}

/** Every PromQL expression of the rules and dashboards. */
async function allExpressions(): Promise<{ where: string; expr: string }[]> {
  const [rule] = (await loadYaml(path.join(OBS, 'prometheusrule.yaml'))) as [
    { spec: { groups: { rules: { alert: string; expr: string }[] }[] } },
  ];
  const out = rule.spec.groups.flatMap((g) =>
    g.rules.map((r) => ({ where: `alert ${r.alert}`, expr: r.expr })),
  );
  for (const d of dashboards()) {
    for (const p of d.panels)
      for (const t of p.targets ?? []) out.push({ where: `${d.file}: ${p.title}`, expr: t.expr });
  }
  return out;
}

/** Metric names our code registers with prom-client (`name: 'haystack_…'`). */
function registeredHaystackMetrics(): Set<string> {
  const names = new Set<string>();
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) {
        for (const m of readFileSync(p, 'utf8').matchAll(/name: '(haystack_[a-z0-9_]+)'/g)) names.add(m[1]!);
      }
    }
  };
  walk(path.join(ROOT, 'internal'));
  return names;
}

/** Metric names in an expression: label matchers and label lists (by, on, group_left...) removed first. */
function metricNames(expr: string, prefix: string): string[] {
  const bare = expr
    .replace(/\{[^}]*\}/g, '')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '');
  return [...bare.matchAll(new RegExp(`\\b(${prefix}[a-z0-9_]+)\\b`, 'g'))].map((m) => m[1]!);
}

describe('deploy/observability: alert rules and dashboards', () => {
  it('promtool check rules accepts the alert rules', async () => {
    const dir = await plainRules();
    const res = await exec(tool('promtool'), ['check', 'rules', path.join(dir, 'rules.yaml')]);
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(res.stdout).toMatch(/SUCCESS: \d+ rules found/);
  });

  it('promtool test rules: each alert fires on its condition and not before (alerts.test.yaml)', async () => {
    const dir = await plainRules();
    const res = await exec(tool('promtool'), ['test', 'rules', path.join(dir, 'alerts.test.yaml')]);
    expect(res.code, res.stdout + res.stderr).toBe(0);
    const tested = new Set(
      [...readFileSync(path.join(OBS, 'alerts.test.yaml'), 'utf8').matchAll(/alertname: (\w+)/g)].map(
        (m) => m[1],
      ),
    );
    // The alerts the issue asks for are each tested.
    for (const a of [
      'HaystackBlobsBelowTarget',
      'HaystackStoreDown',
      'HaystackStoreDiskFilling',
      'HaystackDirectoryLeaderFlapping',
      'HaystackStoreFsyncSlow',
    ]) {
      expect(tested, a).toContain(a);
    }
  });

  it('every dashboard query is valid PromQL (promtool, as recording rules)', async () => {
    const exprs = (await allExpressions()).filter((e) => !e.where.startsWith('alert'));
    expect(exprs.length).toBeGreaterThan(30);
    const rules = {
      groups: [
        {
          name: 'dashboards',
          rules: exprs.map((e, i) => ({
            record: `dashboard:query_${i}`,
            // Grafana's variables, as Grafana would substitute them.
            expr: e.expr.replaceAll('$__rate_interval', '1m').replaceAll('$instance', '.+'),
          })),
        },
      ],
    };
    const file = `${tmpName('dashboard-rules')}.yaml`;
    writeFileSync(file, JSON.stringify(rules));
    const res = await exec(tool('promtool'), ['check', 'rules', file]);
    expect(res.code, res.stdout + res.stderr).toBe(0);
  });

  it('every haystack_* metric the rules and dashboards use is registered by our code', async () => {
    const registered = registeredHaystackMetrics();
    expect(registered).toContain('haystack_store_fsync_duration_seconds');
    const missing: string[] = [];
    for (const { where, expr } of await allExpressions()) {
      for (const n of metricNames(expr, 'haystack_')) {
        const base = n.replace(/_(bucket|count|sum)$/, '');
        if (!registered.has(n) && !registered.has(base)) missing.push(`${where}: ${n}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it('dashboards have unique uids, and the kustomization ships each of them', async () => {
    const ds = dashboards();
    expect(new Set(ds.map((d) => d.uid)).size).toBe(ds.length);
    const kust = readFileSync(path.join(OBS, 'kustomization.yaml'), 'utf8');
    for (const d of ds) expect(kust).toContain(`dashboards/${d.file}`);
    for (const d of ds)
      for (const p of d.panels) if (p.type !== 'row') expect(p.targets?.length, p.title).toBeGreaterThan(0);
  });

  it('the ServiceMonitors scrape ports the scrape Services name, on the ports the servers listen on', async () => {
    const monitors = await serviceMonitors();
    const services = (await loadYaml(path.join(OBS, 'metrics-services.yaml'))) as {
      metadata: { labels: Record<string, string> };
      spec: { selector: { app: string }; ports: { name: string; port: number }[] };
    }[];
    const apps = new Set<string>();
    for (const s of services) {
      // Exactly one ServiceMonitor selects each Service, and it scrapes the Service's port.
      const selecting = monitors.filter((sm) =>
        Object.entries(sm.spec.selector.matchLabels).every(([k, v]) => s.metadata.labels[k] === v),
      );
      expect(selecting.length, s.spec.selector.app).toBe(1);
      expect(selecting[0]!.spec.endpoints.map((e) => e.port)).toContain(s.spec.ports[0]!.name);
      apps.add(s.spec.selector.app);
    }
    expect([...apps].sort()).toEqual(['directory', 'envoy', 'gateway', 'replication', 'store']);
    // Each port is the one the component's pods serve (deploy/kubernetes and envoy/envoy.yaml).
    const k8s = path.join(ROOT, 'deploy/kubernetes');
    for (const s of services) {
      const port = s.spec.ports[0]!.port;
      if (s.spec.selector.app === 'envoy') {
        expect(deployEnvoyOptions().stats).toEqual({ host: '0.0.0.0', port });
      } else {
        expect(readFileSync(path.join(k8s, `${s.spec.selector.app}.yaml`), 'utf8')).toContain(
          `containerPort: ${port}`,
        );
      }
    }
  });

  it('servers are scraped over https, verified against the Issuer CA with a serverName their certificates carry; Envoy over http', async () => {
    const security = readFileSync(path.join(ROOT, 'deploy/kubernetes/security.yaml'), 'utf8');
    const issuer = /kind: Issuer[\s\S]*?ca: \{ secretName: ([\w-]+) \}/.exec(security)?.[1];
    expect(issuer).toBe('haystack-ca');
    const seen: string[] = [];
    for (const sm of await serviceMonitors()) {
      const component = sm.spec.selector.matchLabels['app.kubernetes.io/component']!;
      for (const e of sm.spec.endpoints) {
        seen.push(component);
        if (component === 'envoy') {
          // The stats listener is plain HTTP (no transport socket).
          expect(e.scheme ?? 'http').toBe('http');
          expect(e.tlsConfig).toBeUndefined();
          continue;
        }
        expect(e.scheme, component).toBe('https');
        // The CA certificate of the Secret the cert-manager Issuer signs with (kubernetes.io/tls layout);
        // no client certificate (/metrics is open to any TLS client) and no skipped verification.
        expect(e.tlsConfig, component).toEqual({
          ca: { secret: { name: issuer, key: 'tls.crt' } },
          serverName: component,
        });
        expect(dnsSans(component, 'store-0')).toContain(e.tlsConfig!.serverName);
      }
    }
    expect(seen.sort()).toEqual(['directory', 'envoy', 'gateway', 'replication', 'store']);
  });

  it("a real server's /metrics answers the ServiceMonitor's scrape (https, CA, serverName, no client certificate) and nothing else", async () => {
    const log = createLogger('test', 'scrape', 'silent');
    const ca = await createCa(1);
    const dir = tmpName('scrape-pki');
    for (const sm of await serviceMonitors()) {
      const component = sm.spec.selector.matchLabels['app.kubernetes.io/component']!;
      if (component === 'envoy') continue;
      const e = sm.spec.endpoints[0]!;
      // The pod's certificate as cert-manager's CSI driver issues it in deploy/kubernetes.
      const files = await writeIdentity(
        ca,
        dir,
        { role: component as Role, id: `${component}-0` },
        dnsSans(component, `${component}-0`),
      );
      const server = await startServer({
        security: {
          mode: 'mtls',
          cert: readFileSync(files.certFile, 'utf8'),
          key: readFileSync(files.keyFile, 'utf8'),
          ca: ca.certPem,
          identity: { role: component as Role, id: `${component}-0` },
          directoryPeerIds: [],
        },
        component,
        instance: `${component}-0`,
        listen: '127.0.0.1:0',
        log,
        shutdownGraceMs: 1000,
        services: [],
      });
      try {
        const scrape = (o: { scheme: string; serverName?: string }) =>
          get(o.scheme, server.port, e.path, { ca: ca.certPem, servername: o.serverName });
        // As Prometheus would scrape the pod IP with this endpoint's config.
        const ok = await scrape({ scheme: e.scheme!, serverName: e.tlsConfig?.serverName });
        expect(ok, component).toMatchObject({ status: 200 });
        expect((ok as { body: string }).body).toMatch(/^process_cpu_user_seconds_total /m);
        // Without the scheme (Prometheus's default http) the TLS-only port gives no answer.
        expect(await scrape({ scheme: 'http' }), component).toHaveProperty('error');
        // A serverName the certificate does not carry fails verification.
        const wrong = await scrape({ scheme: 'https', serverName: 'not-a-san' });
        expect((wrong as { error?: string }).error, component).toMatch(/altnames|Hostname\/IP/i);
      } finally {
        await server.close();
      }
    }
  });
});

/** One GET; the status and body, or the error (an empty reply, a failed verification). */
function get(
  scheme: string,
  port: number,
  urlPath: string,
  tls: { ca: string; servername?: string },
): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const opts = { host: '127.0.0.1', port, path: urlPath, timeout: 5000 };
    const req =
      scheme === 'https'
        ? https.get({ ...opts, ca: tls.ca, servername: tls.servername, agent: false })
        : http.get({ ...opts, agent: false });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ error: err.message }));
  });
}

describe('Envoy stats listener (real Envoy): Prometheus text, and nothing else of the admin', () => {
  let envoy: EnvoyProcess;
  let stats: string;

  beforeAll(async () => {
    const h = (port: number) => ({ host: '127.0.0.1', port });
    const [listen, admin, statsPort, dead] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    stats = `http://127.0.0.1:${statsPort}`;
    envoy = await startEnvoy({
      bin: tool('envoy'),
      dir: tmpName('envoy-stats'),
      config: {
        listen: h(listen),
        admin: h(admin),
        stats: h(statsPort),
        gateways: [h(dead)],
        directories: [h(dead)],
        replication: [h(dead)],
        corsOrigins: [],
        uploadRateLimit: DEFAULT_UPLOAD_RATE_LIMIT,
        deleteRateLimit: DEFAULT_DELETE_RATE_LIMIT,
        maxUploadBytes: 1024,
      },
    });
    // One request through the public listener, so per-status counters exist.
    await fetch(`http://127.0.0.1:${listen}/no-such-route`);
  });
  afterAll(async () => {
    await envoy?.stop();
  });

  it('serves GET /stats/prometheus, with every envoy_* metric the rules and dashboards use', async () => {
    const res = await fetch(`${stats}/stats/prometheus`);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toMatch(/^envoy_cluster_upstream_cx_total\{envoy_cluster_name="gateways"\} \d+$/m);
    const exported = new Set([...text.matchAll(/^# TYPE (envoy_[a-z0-9_]+) /gm)].map((m) => m[1]));
    const used = (await allExpressions()).flatMap((e) =>
      metricNames(e.expr, 'envoy_').map((n) => `${e.where}: ${n}`),
    );
    expect(used.length).toBeGreaterThan(0);
    expect(used.filter((u) => !exported.has(u.split(': ').at(-1)))).toEqual([]);
    expect(text).toMatch(
      /^envoy_http_downstream_rq_xx\{envoy_response_code_class="4",envoy_http_conn_manager_prefix="public"\} 1$/m,
    );
  });

  it('refuses the rest of the admin interface', async () => {
    for (const p of ['/config_dump', '/clusters', '/stats', '/ready', '/']) {
      const res = await fetch(`${stats}${p}`);
      expect(res.status, p).toBe(404);
    }
    for (const p of ['/quitquitquit', '/healthcheck/fail', '/stats/prometheus']) {
      const res = await fetch(`${stats}${p}`, { method: 'POST' });
      expect(res.status, p).toBe(404);
    }
    // Envoy is still up (quitquitquit did not reach the admin).
    expect((await fetch(`${envoy.adminUrl}/ready`)).status).toBe(200);
  });
});
