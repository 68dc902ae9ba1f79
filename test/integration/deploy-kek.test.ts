import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../internal/cli/processes.js';
import { exec } from '../helpers/tools.js';

interface ComposeFile {
  services: Record<string, { command?: string[]; environment?: Record<string, string>; secrets?: string[] }>;
  secrets?: Record<string, { file?: string }>;
}
interface K8sDoc {
  kind: string;
  metadata: { name: string };
  spec?: {
    template?: {
      spec: {
        volumes?: { name: string; secret?: { secretName: string } }[];
        containers: {
          name: string;
          env?: { name: string; value?: string }[];
          volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
        }[];
      };
    };
  };
}

/** YAML as the tools see it (anchors and merge keys resolved by PyYAML). */
async function load(file: string): Promise<unknown[]> {
  const script = 'import sys, yaml, json\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))';
  const res = await exec('python3', ['-c', script, path.join(PROJECT_ROOT, file)]);
  if (res.code !== 0) throw new Error(res.stderr);
  return JSON.parse(res.stdout) as unknown[];
}

describe('deploy/: stores get their key-encryption keys (KEK_FILE) from a secret file', () => {
  it('compose: every store reads KEK_FILE from the haystack-kek secret (deploy/kek)', async () => {
    const compose = (await load('deploy/docker-compose.yml'))[0] as ComposeFile;
    const stores = Object.entries(compose.services).filter(([, s]) => s.command?.[0] === 'store');
    expect(stores.length).toBe(5);
    for (const [name, s] of stores) {
      expect(s.environment?.KEK_FILE, name).toBe('/run/secrets/haystack-kek');
      expect(s.secrets, name).toContain('haystack-kek');
    }
    expect(compose.secrets?.['haystack-kek']?.file).toBe('./kek');
  });

  it('kubernetes: the store mounts the haystack-kek Secret read-only where KEK_FILE points', async () => {
    const docs = (await load('deploy/kubernetes/store.yaml')) as K8sDoc[];
    const spec = docs.find((d) => d.kind === 'StatefulSet' && d.metadata.name === 'store')!.spec!.template!
      .spec;
    const vol = spec.volumes?.find((v) => v.secret?.secretName === 'haystack-kek');
    expect(vol).toBeDefined();
    const c = spec.containers.find((x) => x.name === 'store')!;
    const kekFile = c.env?.find((e) => e.name === 'KEK_FILE')?.value ?? '';
    const mount = c.volumeMounts?.find((m) => m.name === vol!.name);
    expect(mount?.readOnly).toBe(true);
    expect(path.posix.dirname(kekFile)).toBe(mount?.mountPath);
  });
});
