import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../internal/cli/processes.js';
import { exec, tmpName, tool } from '../helpers/tools.js';

type Env = Record<string, string>;
interface ComposeService {
  image?: string;
  user?: string;
  command?: string[];
  environment?: Env;
  healthcheck?: { test: string[] };
  volumes?: string[];
}
interface K8sContainer {
  name: string;
  env?: {
    name: string;
    value?: string;
    valueFrom?: { fieldRef?: { fieldPath: string }; secretKeyRef?: { name: string; key: string } };
  }[];
  readinessProbe?: unknown;
  livenessProbe?: unknown;
  volumeMounts?: { name: string; mountPath: string; subPath?: string; readOnly?: boolean }[];
}
interface K8sVolume {
  name: string;
  secret?: { secretName: string; items?: { key: string; path: string }[] };
}
interface K8sDoc {
  kind: string;
  metadata: { name: string };
  spec?: {
    replicas?: number;
    serviceName?: string;
    type?: string;
    externalTrafficPolicy?: string;
    template?: {
      spec: { containers: K8sContainer[]; securityContext?: { fsGroup?: number }; volumes?: K8sVolume[] };
    };
    minAvailable?: number;
    maxUnavailable?: number;
  };
}

const K8S_FILES = ['namespace', 'redis', 'directory', 'store', 'replication', 'gateway', 'envoy'];

/** The manifests as the tools see them: YAML anchors and merge keys resolved (PyYAML). */
async function load(files: string[]): Promise<unknown[][]> {
  const script =
    'import sys, yaml, json\nprint(json.dumps([list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]))';
  const res = await exec('python3', ['-c', script, ...files.map((f) => path.join(PROJECT_ROOT, f))]);
  if (res.code !== 0) throw new Error(res.stderr);
  return JSON.parse(res.stdout) as unknown[][];
}

/**
 * The final stage of a Dockerfile as the image runs it: its last USER, and who owns each
 * directory its RUN lines create or chown (before that USER; root until one chowns it).
 */
function finalStage(dockerfile: string): { user: string; owners: Map<string, string> } {
  const lines = dockerfile
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const stage = lines.slice(lines.findLastIndex((l) => /^FROM\s/i.test(l)));
  let user = 'root';
  const owners = new Map<string, string>();
  for (const l of stage) {
    const [op, ...rest] = l.split(/\s+/);
    const arg = rest.join(' ');
    if (/^USER$/i.test(op!)) user = arg.split(':')[0]!;
    if (!/^RUN$/i.test(op!)) continue;
    for (const cmd of arg.split(/&&|;/).map((c) => c.trim().split(/\s+/))) {
      const paths = cmd.slice(1).filter((a) => a.startsWith('/'));
      if (cmd[0] === 'mkdir') for (const d of paths) if (!owners.has(d)) owners.set(d, user);
      const owner = cmd.slice(1).find((a) => !a.startsWith('-'));
      if (cmd[0] === 'chown' && owner) for (const d of paths) owners.set(d, owner.split(':')[0]!);
    }
  }
  return { user, owners };
}

const list = (v: string | undefined) => (v ?? '').split(',').filter(Boolean);

describe('deploy/: every store and gateway reports heat to the replication managers', () => {
  let compose: { services: Record<string, ComposeService> };
  let k8s: K8sDoc[];

  beforeAll(async () => {
    const docs = await load([
      'deploy/docker-compose.yml',
      ...K8S_FILES.map((f) => `deploy/kubernetes/${f}.yaml`),
    ]);
    compose = docs[0]![0] as typeof compose;
    k8s = docs.slice(1).flat() as K8sDoc[];
  });

  it('compose: stores and gateways get REPLICATION_ADDRS naming the replication service', () => {
    const roles = (role: string) =>
      Object.entries(compose.services).filter(([, s]) => s.command?.[0] === role);
    const managers = roles('replication').map(([name, s]) => {
      const port = (s.environment?.LISTEN ?? '').split(':')[1];
      return `${name}:${port}`;
    });
    expect(managers.length).toBeGreaterThan(0);
    const stores = roles('store');
    expect(stores.length).toBe(5);
    for (const [name, s] of [...stores, ...roles('gateway')]) {
      expect(list(s.environment?.REPLICATION_ADDRS).sort(), name).toEqual(managers.sort());
    }
  });

  it('Kubernetes: stores and gateways list every replication manager pod by its stable name', () => {
    const rep = k8s.find((d) => d.metadata.name === 'replication' && d.kind === 'StatefulSet');
    expect(rep, 'the replication managers are a StatefulSet (stable names)').toBeDefined();
    const managers = Array.from(
      { length: rep!.spec!.replicas ?? 1 },
      (_, i) => `replication-${i}.${rep!.spec!.serviceName}:9003`,
    );
    for (const name of ['store', 'gateway']) {
      const w = k8s.find((d) => d.metadata.name === name && d.spec?.template);
      const c = w!.spec!.template!.spec.containers.find((x) => x.name === name);
      const v = c?.env?.find((e) => e.name === 'REPLICATION_ADDRS')?.value;
      expect(list(v), name).toEqual(managers);
    }
  });

  it('Kubernetes: writable /data (fsGroup), PDBs (directory quorum, stores one at a time), ZONE from the node, Envoy probes', () => {
    const workload = (name: string) => k8s.find((d) => d.metadata.name === name && d.spec?.template)!;
    for (const name of ['directory', 'store', 'replication', 'gateway', 'redis']) {
      expect(workload(name).spec!.template!.spec.securityContext?.fsGroup, name).toBeGreaterThan(0);
    }
    const pdb = (name: string) =>
      k8s.find((d) => d.kind === 'PodDisruptionBudget' && d.metadata.name === name);
    expect(pdb('directory')?.spec?.minAvailable).toBe(2);
    expect(pdb('store')?.spec?.maxUnavailable).toBe(1);
    const zone = workload('store').spec!.template!.spec.containers[0]!.env!.find((e) => e.name === 'ZONE');
    expect(zone?.valueFrom?.fieldRef?.fieldPath).toBe("metadata.labels['topology.kubernetes.io/zone']");
    const envoy = workload('envoy').spec!.template!.spec.containers[0]!;
    expect(envoy.readinessProbe).toBeDefined();
    expect(envoy.livenessProbe).toBeDefined();
  });

  it('Kubernetes: the lease Redis names its HA option and links the section of docs/operations.md that explains it', () => {
    const comment = readFileSync(path.join(PROJECT_ROOT, 'deploy/kubernetes/redis.yaml'), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('#'))
      .map((l) => l.slice(1).trim())
      .join(' ');
    const section = /docs\/operations\.md, "([^"]+)"/.exec(comment)?.[1];
    expect(section, comment).toBeDefined();
    const ops = readFileSync(path.join(PROJECT_ROOT, 'docs/operations.md'), 'utf8');
    expect(ops.split('\n')).toContain(`## ${section}`);
    expect(comment).toMatch(/one endpoint \(REDIS_URL\)/);
  });

  it('Kubernetes: every manifest passes kubernetes-validate --strict (bundled schemas); a broken one fails', async () => {
    const bin = tool('kubernetes-validate');
    const files = K8S_FILES.map((f) => path.join(PROJECT_ROOT, 'deploy/kubernetes', `${f}.yaml`));
    const ok = await exec(bin, ['--strict', '--quiet', ...files]);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    const broken = `${tmpName('broken')}.yaml`;
    writeFileSync(
      broken,
      readFileSync(files[3]!, 'utf8').replace(
        'podManagementPolicy: Parallel',
        'podManagementPolicy: Parallel\n  replicaz: 3',
      ),
    );
    const bad = await exec(bin, ['--strict', '--quiet', broken]);
    expect(bad.code).not.toBe(0);
  });

  it('Kubernetes: the gateways read the JWKS from the Secret haystack-auth as a reloadable file and the URL keys from it; Envoy fetches the JWKS from them and sees client addresses', () => {
    const gw = k8s.find((d) => d.metadata.name === 'gateway' && d.spec?.template)!.spec!.template!.spec;
    const c = gw.containers.find((x) => x.name === 'gateway')!;
    const env = (name: string) => c.env?.find((e) => e.name === name);
    const jwksFile = env('AUTH_JWKS_FILE')?.value ?? '';
    const mount = c.volumeMounts?.find((m) => jwksFile.startsWith(`${m.mountPath}/`));
    expect(mount, 'AUTH_JWKS_FILE lies on a mounted volume').toBeDefined();
    // A subPath mount never sees a Secret update: the rotation would need a restart.
    expect(mount?.subPath).toBeUndefined();
    expect(mount?.readOnly).toBe(true);
    const vol = gw.volumes?.find((v) => v.name === mount?.name);
    expect(vol?.secret?.secretName).toBe('haystack-auth');
    const file = jwksFile.slice((mount?.mountPath.length ?? 0) + 1);
    expect(vol?.secret?.items?.find((i) => i.path === file)?.key).toBe('jwks.json');
    expect(env('AUTH_JWKS_RELOAD_INTERVAL')?.value).toMatch(/^\d+s$/);
    expect(env('URL_SIGNING_KEYS')?.valueFrom?.secretKeyRef).toEqual({
      name: 'haystack-auth',
      key: 'url-signing-keys',
    });
    // The Secret's recipe names both keys; the private signing key is not in the cluster.
    const security = readFileSync(path.join(PROJECT_ROOT, 'deploy/kubernetes/security.yaml'), 'utf8');
    expect(security).toMatch(/create secret generic haystack-auth --from-file=jwks\.json=/);
    expect(security).toContain('--from-literal=url-signing-keys=');
    expect(/signing-key\.json|HAYSTACK_SIGNING_KEY_FILE/.test(JSON.stringify(k8s))).toBe(false);
    // Envoy: the JWKS comes from the gateways (remote_jwks through the gateways cluster).
    const edge = readFileSync(path.join(PROJECT_ROOT, 'deploy/kubernetes/envoy-config/envoy.yaml'), 'utf8');
    expect(edge).toMatch(
      /remote_jwks:\s+http_uri:\s+uri: "https:\/\/gateways\/\.well-known\/jwks\.json"\s+cluster: gateways/,
    );
    const svc = k8s.find((d) => d.kind === 'Service' && d.metadata.name === 'haystack');
    expect(svc?.spec?.type).toBe('LoadBalancer');
    expect(svc?.spec?.externalTrafficPolicy).toBe('Local');
  });

  it('compose: the gateways read deploy/auth/jwks.json from a mounted directory and URL_SIGNING_KEYS from .env', () => {
    const gw = compose.services.gateway!;
    const jwksFile = gw.environment?.AUTH_JWKS_FILE ?? '';
    const dir = (gw.volumes ?? [])
      .map((v) => v.split(':'))
      .find(([, target]) => jwksFile.startsWith(`${target}/`));
    expect(
      dir,
      'AUTH_JWKS_FILE lies on a mounted directory (a single-file bind misses a rotation)',
    ).toBeDefined();
    expect(dir?.[0]).toBe('./auth');
    expect(dir?.[2]).toBe('ro');
    expect(gw.environment?.AUTH_JWKS_RELOAD_INTERVAL).toMatch(/^\d+s$/);
    // Compose interpolates it from deploy/.env and refuses to start without it (:?).
    expect(gw.environment?.URL_SIGNING_KEYS).toBe(['$', '{HAYSTACK_URL_SIGNING_KEYS:?}'].join(''));
  });

  it('compose: every service with a /data volume runs as the user who owns /data in its image', () => {
    const dockerfile = readFileSync(path.join(PROJECT_ROOT, 'deploy/Dockerfile'), 'utf8');
    // The image compose names is the one deploy/Dockerfile builds (the command in its header).
    expect(dockerfile).toContain('docker build -f deploy/Dockerfile -t haystack:latest .');
    const image = finalStage(dockerfile);
    expect(image.user).toBe('node');
    const withData = Object.entries(compose.services).filter(([, s]) =>
      (s.volumes ?? []).some((v) => v.split(':')[1] === '/data'),
    );
    expect(withData.length).toBeGreaterThanOrEqual(9);
    for (const [name, svc] of withData) {
      if (svc.image === 'haystack:latest') {
        // An empty named volume mounted at /data takes the owner of the image's /data.
        expect(svc.user, name).toBeUndefined();
        expect(image.owners.get('/data'), `${name}: /data of deploy/Dockerfile`).toBe(image.user);
      } else {
        // The official Redis image starts as root and chowns /data to redis before it drops to it.
        expect(svc.image, name).toMatch(/^redis:/);
        expect(svc.user, name).toBeUndefined();
        expect(svc.command?.[0], name).toBe('redis-server');
      }
    }
  });

  it('compose: every service has a healthcheck and waits for what it needs; no Swarm claim', () => {
    for (const [name, svc] of Object.entries(compose.services)) {
      expect(svc.healthcheck?.test.length, name).toBeGreaterThan(0);
    }
    const text = readFileSync(path.join(PROJECT_ROOT, 'deploy/docker-compose.yml'), 'utf8');
    expect(text).not.toMatch(/swarm/i);
  });
});
