import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from '@connectrpc/connect-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { deployEnvoyYaml } from '../../internal/edge/deploy-config.js';
import {
  DEFAULT_DELETE_RATE_LIMIT,
  DEFAULT_UPLOAD_RATE_LIMIT,
  renderEnvoyConfig,
  toYaml,
} from '../../internal/edge/envoy-config.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { bytes } from '../helpers/store-client.js';
import { exec, grpcurl, tmpName, tool } from '../helpers/tools.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('Envoy configuration', () => {
  it('envoy/envoy.yaml (deploy) is what the generator renders, and the real envoy validates it', async () => {
    const onDisk = readFileSync(new URL('../../envoy/envoy.yaml', import.meta.url), 'utf8');
    expect(onDisk).toBe(deployEnvoyYaml());
    const res = await exec(tool('envoy'), ['--mode', 'validate', '-c', 'envoy/envoy.yaml'], {
      timeoutMs: 30_000,
    });
    expect(res.stdout + res.stderr).toContain("configuration 'envoy/envoy.yaml' OK");
  });

  it('deploy/ manifests are valid YAML and carry the same Envoy config', async () => {
    const k8sCopy = readFileSync(
      new URL('../../deploy/kubernetes/envoy-config/envoy.yaml', import.meta.url),
      'utf8',
    );
    expect(k8sCopy).toBe(deployEnvoyYaml());
    const files = [
      'deploy/docker-compose.yml',
      ...['kustomization', 'namespace', 'redis', 'directory', 'store', 'replication', 'gateway', 'envoy'].map(
        (f) => `deploy/kubernetes/${f}.yaml`,
      ),
    ];
    // PyYAML (python3 is on every machine the bootstrap runs on).
    const script =
      'import sys, yaml, json\nprint(json.dumps([list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]))';
    const res = await exec('python3', ['-c', script, ...files]);
    expect(res.code, res.stderr).toBe(0);
    const docs = JSON.parse(res.stdout) as unknown[][];
    const compose = docs[0]![0] as { services: Record<string, { command?: string[] }> };
    expect(Object.keys(compose.services)).toEqual(
      expect.arrayContaining([
        'redis',
        'redis-cache',
        'directory-0',
        'store-0',
        'gateway',
        'replication',
        'envoy',
      ]),
    );
    expect(compose.services['redis-cache']!.command).toEqual(
      expect.arrayContaining(['--maxmemory', '5gb', '--maxmemory-policy', 'allkeys-lru']),
    );
    const kinds = docs
      .slice(1)
      .flat()
      .map((d) => (d as { kind: string }).kind);
    expect(kinds).toEqual(expect.arrayContaining(['StatefulSet', 'Deployment', 'Service', 'Kustomization']));
  });

  it('validates the local config rendered with actual ports', async () => {
    const h = (port: number) => ({ host: '127.0.0.1', port });
    const file = `${tmpName('envoy')}.yaml`;
    writeFileSync(
      file,
      toYaml(
        renderEnvoyConfig({
          listen: h(18080),
          admin: h(19901),
          gateways: [h(8100), h(8101)],
          directories: [h(9000), h(9001), h(9002)],
          replication: [h(9003)],
          corsOrigins: ['http://localhost:3000', 'https://photos.example.com'],
          uploadRateLimit: DEFAULT_UPLOAD_RATE_LIMIT,
          deleteRateLimit: DEFAULT_DELETE_RATE_LIMIT,
          maxUploadBytes: 1024,
        }),
      ),
    );
    const res = await exec(tool('envoy'), ['--mode', 'validate', '-c', file], { timeoutMs: 30_000 });
    expect(res.code, res.stderr).toBe(0);
  });
});

describe('the edge: real Envoy in front of real gateways, directories and stores', () => {
  let cluster: Cluster;
  let envoy: string;

  beforeAll(async () => {
    cluster = await Cluster.start({
      gateways: 2,
      envoy: {
        deleteRateLimit: { maxTokens: 5, tokensPerFill: 5, fillIntervalMs: 3000 },
        maxUploadBytes: 4 * 1024 * 1024,
      },
      gatewayEnv: { MAX_UPLOAD_SIZE: '4MiB' },
    });
    envoy = cluster.envoy!.address;
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('grpcurl lists and describes the public API through Envoy (reflection)', async () => {
    const list = await grpcurl([envoy, 'list']);
    expect(list.stderr).toBe('');
    expect(list.stdout.split('\n')).toEqual(
      expect.arrayContaining(['haystack.v1.BlobService', 'grpc.health.v1.Health']),
    );
    const desc = await grpcurl([envoy, 'describe', 'haystack.v1.BlobService']);
    expect(desc.code).toBe(0);
    expect(desc.stdout).toContain(
      'rpc Upload ( stream .haystack.v1.UploadRequest ) returns ( .haystack.v1.UploadResponse )',
    );
    expect(desc.stdout).toContain(
      'rpc Download ( .haystack.v1.DownloadRequest ) returns ( stream .haystack.v1.DownloadResponse )',
    );
    const health = await grpcurl([envoy, 'grpc.health.v1.Health/Check']);
    expect(JSON.parse(health.stdout)).toEqual({ status: 'SERVING' });
  });

  it('grpcurl Put, Stat, Download and Delete a blob through Envoy', async () => {
    const data = Buffer.from('hello, haystack — through envoy\n'.repeat(100));
    const put = await grpcurl([
      '-d',
      JSON.stringify({ data: data.toString('base64'), content_type: 'text/plain' }),
      envoy,
      'haystack.v1.BlobService/Put',
    ]);
    expect(put.code, put.stderr).toBe(0);
    const blob = JSON.parse(put.stdout).blob;
    expect(blob.blobId).toBe(sha(data));
    expect(blob.sha256).toBe(sha(data));
    expect(blob.size).toBe(String(data.length));
    expect(blob.replicaCount).toBe(3);

    const stat = await grpcurl([
      '-d',
      JSON.stringify({ blob_id: blob.blobId }),
      envoy,
      'haystack.v1.BlobService/Stat',
    ]);
    expect(JSON.parse(stat.stdout).blob).toMatchObject({ blobId: blob.blobId, contentType: 'text/plain' });

    const dl = await grpcurl([
      '-d',
      JSON.stringify({ blob_id: blob.blobId }),
      envoy,
      'haystack.v1.BlobService/Download',
    ]);
    expect(dl.code, dl.stderr).toBe(0);
    // grpcurl prints one JSON document per message: the info, then chunks.
    const msgs = dl.stdout
      .split(/\n(?=\{)/)
      .filter((s) => s.trim())
      .map((s) => JSON.parse(s));
    expect(msgs[0].info.blobId).toBe(blob.blobId);
    const content = Buffer.concat(msgs.slice(1).map((m) => Buffer.from(m.chunk, 'base64')));
    expect(content.equals(data)).toBe(true);

    const del = await grpcurl([
      '-d',
      JSON.stringify({ blob_id: blob.blobId }),
      envoy,
      'haystack.v1.BlobService/Delete',
    ]);
    expect(JSON.parse(del.stdout)).toEqual({ found: true });
    const gone = await grpcurl([
      '-d',
      JSON.stringify({ blob_id: blob.blobId }),
      envoy,
      'haystack.v1.BlobService/Stat',
    ]);
    expect(gone.code).not.toBe(0);
    expect(gone.stderr).toContain('NotFound');
    const bad = await grpcurl(['-d', '{"blob_id":"no/slashes"}', envoy, 'haystack.v1.BlobService/Stat']);
    expect(bad.stderr).toContain('InvalidArgument');
  });

  it('serves GET /blobs/{id} for <img>: type, length, ETag, Cache-Control, ranges, 304, 404', async () => {
    const client = new HaystackClient({ url: cluster.url });
    const png = bytes(70_000, 11);
    const b = await client.upload(png, { contentType: 'image/png' });
    const url = `${cluster.url}/blobs/${b.id}`;
    const res = await fetch(url);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/png');
    expect(res.headers.get('content-length')).toBe('70000');
    expect(res.headers.get('etag')).toBe(`"${sha(png)}"`);
    expect(res.headers.get('cache-control')).toMatch(/max-age=\d+/);
    expect(res.headers.get('accept-ranges')).toBe('bytes');
    expect(Buffer.from(await res.arrayBuffer()).equals(png)).toBe(true);

    const part = await fetch(url, { headers: { range: 'bytes=100-199' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe('bytes 100-199/70000');
    expect(Buffer.from(await part.arrayBuffer()).equals(png.subarray(100, 200))).toBe(true);
    const tail = await fetch(url, { headers: { range: 'bytes=-10' } });
    expect(Buffer.from(await tail.arrayBuffer()).equals(png.subarray(-10))).toBe(true);
    const beyond = await fetch(url, { headers: { range: 'bytes=70000-' } });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe('bytes */70000');

    const cached = await fetch(url, { headers: { 'if-none-match': `"${sha(png)}"` } });
    expect(cached.status).toBe(304);
    const head = await fetch(url, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe('70000');

    expect((await fetch(`${cluster.url}/blobs/never-uploaded`)).status).toBe(404);
    await client.delete(b.id);
    expect((await fetch(url)).status).toBe(404);
  });

  it('speaks gRPC-Web and Connect (HTTP/1.1) to browsers, with CORS', async () => {
    for (const transport of [
      createGrpcWebTransport({ baseUrl: cluster.url, httpVersion: '1.1' }),
      createConnectTransport({ baseUrl: cluster.url, httpVersion: '1.1' }),
    ]) {
      const c = new HaystackClient({ transport, unaryUploads: true });
      const data = bytes(30_000, 12);
      const b = await c.upload(data, { contentType: 'image/jpeg' });
      const { data: back } = await c.download(b.id);
      expect(Buffer.from(back).equals(data)).toBe(true);
    }
    const pre = await fetch(`${cluster.url}/haystack.v1.BlobService/Put`, {
      method: 'OPTIONS',
      headers: {
        origin: 'http://localhost:5173',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type,connect-protocol-version',
      },
    });
    expect(pre.status).toBe(200);
    expect(pre.headers.get('access-control-allow-origin')).toBe('http://localhost:5173');
    expect(pre.headers.get('access-control-allow-methods')).toContain('POST');
  });

  it('rate-limits a burst of deletes (RESOURCE_EXHAUSTED / 429) while other traffic goes on', async () => {
    await new Promise((r) => setTimeout(r, 3100)); // a full bucket: 5 tokens, 5 more every 3 s
    const grpc = createClient(BlobService, createGrpcTransport({ baseUrl: cluster.url }));
    const client = new HaystackClient({ url: cluster.url });
    const [rpc, http, other] = await Promise.all([
      Promise.allSettled(Array.from({ length: 30 }, (_, i) => grpc.delete({ blobId: `burst-${i}` }))),
      // Plain HTTP callers (Connect over HTTP/1.1) see 429.
      Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          fetch(`${cluster.url}/haystack.v1.BlobService/Delete`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ blobId: `burst-http-${i}` }),
          }).then((r) => r.status),
        ),
      ),
      // Normal traffic on other routes is unaffected meanwhile.
      client.upload(bytes(1000, 13)).then(async (b) => ({ b, stat: await client.stat(b.id) })),
    ]);
    const limited = rpc.filter(
      (r) => r.status === 'rejected' && ConnectError.from(r.reason).code === Code.ResourceExhausted,
    );
    const ok = rpc.filter((r) => r.status === 'fulfilled').length + http.filter((s) => s === 200).length;
    expect(limited.length + rpc.filter((r) => r.status === 'fulfilled').length).toBe(30); // nothing else failed
    expect(limited.length).toBeGreaterThanOrEqual(20);
    expect(http).toContain(429);
    expect(http.every((s) => s === 200 || s === 429)).toBe(true);
    expect(ok).toBeLessThanOrEqual(10); // the burst of 5, plus at most one refill
    expect(other.stat.size).toBe(1000);

    // Deletes pass again once tokens refill.
    await new Promise((r) => setTimeout(r, 3100));
    expect(await client.delete(other.b.id)).toBe(true);
  });

  it('refuses oversized uploads early: RESOURCE_EXHAUSTED from the gateway, 413 at the edge', async () => {
    const client = new HaystackClient({ url: cluster.url });
    const big = bytes(4 * 1024 * 1024 + 1, 14);
    const err = await client.upload(big).catch((e) => e);
    expect(err.codeName).toBe('RESOURCE_EXHAUSTED');
    expect(err.message).toContain('MAX_UPLOAD_SIZE');
    const http = await fetch(`${cluster.url}/haystack.v1.BlobService/Put`, {
      method: 'POST',
      headers: { 'content-type': 'application/proto', 'connect-protocol-version': '1' },
      body: new Uint8Array(5 * 1024 * 1024),
    });
    expect(http.status).toBe(413);
  });
});
