import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from '@connectrpc/connect-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { deployEnvoyYaml } from '../../internal/edge/deploy-config.js';
import { renderEnvoyConfig } from '../../internal/edge/envoy-config.js';
import { toYaml } from '../../internal/edge/envoy-json.js';
import {
  DEFAULT_DELETE_RATE_LIMIT,
  DEFAULT_UPLOAD_RATE_LIMIT,
} from '../../internal/edge/envoy-rate-limit.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { identityFiles } from '../helpers/pki.js';
import { dribbleHeaders } from '../helpers/slow-client.js';
import { bytes } from '../helpers/store-client.js';
import { authInterceptor, authFetch as fetch } from '../helpers/tokens.js';
import { exec, grpcurlPlaintext as grpcurl, tmpName, tool } from '../helpers/tools.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('Envoy configuration', () => {
  it('envoy/envoy.yaml (deploy) is what the generator renders, and the real envoy validates it', async () => {
    const onDisk = readFileSync(new URL('../../envoy/envoy.yaml', import.meta.url), 'utf8');
    expect(onDisk).toBe(deployEnvoyYaml());
    // Envoy reads its certificate files while validating: point the mounted paths at real ones.
    const f = await identityFiles({ role: 'envoy', id: 'envoy' });
    const dir = path.dirname(f.certFile);
    const copy = `${tmpName('envoy-validate')}.yaml`;
    writeFileSync(copy, onDisk.replaceAll('/etc/haystack/tls/', `${dir}/`));
    const res = await exec(tool('envoy'), ['--mode', 'validate', '-c', copy], {
      timeoutMs: 30_000,
    });
    expect(res.stdout + res.stderr).toContain(`configuration '${copy}' OK`);
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
    expect(stat.code, stat.stderr).toBe(0);
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
    expect(del.code, del.stderr).toBe(0);
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

  it('plain HTTP GET and PUT /blobs reach the gateways over HTTP/1.1 (gateways_http1), gRPC over HTTP/2', async () => {
    const stats = async () => {
      const text = await (await fetch(`${cluster.envoy!.adminUrl}/stats?filter=^cluster\\.gateways`)).text();
      const m = new Map<string, number>();
      for (const line of text.split('\n')) {
        const [k, v] = line.split(': ');
        if (k && v !== undefined && /^\d+$/.test(v)) m.set(k, Number(v));
      }
      return (name: string) => m.get(name) ?? 0;
    };
    const client = new HaystackClient({ url: cluster.url });
    const data = bytes(3000, 71);
    const was = await stats();
    const b = await client.upload(data);
    const get = await fetch(`${cluster.url}/blobs/${b.id}`);
    expect(Buffer.from(await get.arrayBuffer()).equals(data)).toBe(true);
    const put = await fetch(`${cluster.url}/blobs/h1-route-1`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${process.env.HAYSTACK_TOKEN}` },
      body: data,
    });
    expect(put.status).toBe(201);
    const now = await stats();
    const delta = (name: string) => now(name) - was(name);
    // The GET and the PUT (Envoy retries none of them here: exactly two).
    expect(delta('cluster.gateways_http1.upstream_rq_total')).toBe(2);
    expect(now('cluster.gateways_http1.upstream_cx_http1_total')).toBeGreaterThan(0);
    expect(now('cluster.gateways_http1.upstream_cx_http2_total')).toBe(0);
    // The SDK's upload is gRPC: the HTTP/2 cluster.
    expect(delta('cluster.gateways.upstream_rq_total')).toBeGreaterThanOrEqual(1);
    expect(now('cluster.gateways.upstream_cx_http1_total')).toBe(0);
    await client.delete(b.id);
    await client.delete('h1-route-1');
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
    // The test cluster allows no foreign origin: nothing is echoed, the browser refuses.
    expect(pre.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('rate-limits a burst of deletes (RESOURCE_EXHAUSTED / 429) while other traffic goes on', async () => {
    await new Promise((r) => setTimeout(r, 3100)); // a full bucket: 5 tokens, 5 more every 3 s
    const grpc = createClient(
      BlobService,
      createGrpcTransport({ baseUrl: cluster.url, interceptors: [authInterceptor] }),
    );
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
    // Refused at the edge by the declared length, as RESOURCE_EXHAUSTED in Connect's own form.
    const http = await fetch(`${cluster.url}/haystack.v1.BlobService/Put`, {
      method: 'POST',
      headers: { 'content-type': 'application/proto', 'connect-protocol-version': '1' },
      body: new Uint8Array(5 * 1024 * 1024),
    });
    expect(http.status).toBe(429);
    expect(await http.json()).toEqual({
      code: 'resource_exhausted',
      message: expect.stringContaining('MAX_UPLOAD_SIZE'),
    });
  });

  it('the upload limit means blob bytes on every protocol (gRPC-Web text and Connect JSON are base64)', async () => {
    const blobs = (transport: Parameters<typeof createClient>[1]) => createClient(BlobService, transport);
    const within = bytes(3 * 1024 * 1024 + 512 * 1024, 21); // 3.5 MiB: over 4 MiB once base64
    const json = blobs(
      createConnectTransport({
        baseUrl: cluster.url,
        httpVersion: '1.1',
        useBinaryFormat: false,
        interceptors: [authInterceptor],
      }),
    );
    const ok = await json.put({ data: within, contentType: 'application/octet-stream' });
    expect(ok.blob?.sha256).toBe(sha(within));
    const over = bytes(4 * 1024 * 1024 + 1, 22);
    const err = await json.put({ data: over }).catch((e: unknown) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.ResourceExhausted);
    expect((err as ConnectError).rawMessage).toContain('MAX_UPLOAD_SIZE');
    // gRPC-Web text, by hand (no Node client speaks it): one base64 length-prefixed message.
    const webText = async (data: Uint8Array) => {
      const { PutRequestSchema } = await import('../../gen/haystack/v1/blob_pb.js');
      const { create, toBinary } = await import('@bufbuild/protobuf');
      const msg = toBinary(PutRequestSchema, create(PutRequestSchema, { data }));
      const frame = Buffer.alloc(5 + msg.length);
      frame.writeUInt32BE(msg.length, 1);
      frame.set(msg, 5);
      const res = await fetch(`${cluster.url}/haystack.v1.BlobService/Put`, {
        method: 'POST',
        headers: { 'content-type': 'application/grpc-web-text', 'x-grpc-web': '1' },
        body: frame.toString('base64'),
      });
      const raw = Buffer.from(await res.arrayBuffer());
      // A text response is base64 chunk by chunk (each padded): decode piece by piece.
      const body = (res.headers.get('content-type') ?? '').includes('text')
        ? (raw.toString('latin1').match(/[A-Za-z0-9+/]+={0,2}/g) ?? [])
            .map((p) => Buffer.from(p, 'base64').toString('latin1'))
            .join('')
        : raw.toString('latin1');
      return { status: res.headers.get('grpc-status') ?? /grpc-status:\s*(\d+)/.exec(body)?.[1], res, body };
    };
    const accepted = await webText(bytes(within.length, 23));
    expect(accepted.status, accepted.res.headers.get('grpc-message') ?? accepted.body.slice(-200)).toBe('0');
    const refused = await webText(over);
    expect(refused.status).toBe('8');
    const message =
      refused.res.headers.get('grpc-message') ?? /grpc-message:\s*([^\r\n]*)/.exec(refused.body)?.[1];
    expect(decodeURIComponent(message ?? '')).toContain('MAX_UPLOAD_SIZE');
  });
});

describe('HTTP semantics of /blobs through Envoy (RFC 9110 §13-15)', () => {
  let cluster: Cluster;
  let base: string;
  let client: HaystackClient;

  beforeAll(async () => {
    const ui = tmpName('ui');
    mkdirSync(ui, { recursive: true });
    writeFileSync(`${ui}/index.html`, '<!doctype html><title>ui</title>');
    cluster = await Cluster.start({
      gateways: 2,
      envoy: { maxUploadBytes: 8 * 1024 * 1024 },
      gatewayEnv: { MAX_UPLOAD_SIZE: '8MiB', UI_DIR: ui },
    });
    base = cluster.url;
    client = new HaystackClient({ url: base });
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('malformed percent-encoding answers 400 with a body, and gateways stay in rotation', async () => {
    for (let i = 0; i < 3; i++) {
      for (const path of ['/blobs/%', '/blobs/%ZZ', '/blobs/%E0%A4%A', '/ui/%']) {
        const res = await fetch(`${base}${path}`);
        expect(res.status, path).toBe(400);
        expect(await res.text(), path).toContain('percent-encoding');
      }
    }
    expect(await cluster.envoy!.healthyHosts('gateways')).toBe(2);
  });

  it('conditionals: If-Modified-Since with the served Last-Modified is 304; If-Match mismatch 412; precedence', async () => {
    const data = bytes(1000, 31);
    const b = await client.upload(data);
    const url = `${base}/blobs/${b.id}`;
    const first = await fetch(url);
    const lm = first.headers.get('last-modified')!;
    const etag = first.headers.get('etag')!;
    expect((await fetch(url, { headers: { 'if-modified-since': lm } })).status).toBe(304);
    expect(
      (await fetch(url, { headers: { 'if-none-match': '"other"', 'if-modified-since': lm } })).status,
    ).toBe(200);
    expect((await fetch(url, { headers: { 'if-match': '"other"' } })).status).toBe(412);
    expect((await fetch(url, { headers: { 'if-match': etag } })).status).toBe(200);
    const old = new Date(Date.parse(lm) - 60_000).toUTCString();
    expect((await fetch(url, { headers: { 'if-unmodified-since': old } })).status).toBe(412);
  });

  it('ranges: invalid ignored (200), HEAD ignores Range, unsatisfiable 416 bytes */size, empty blob', async () => {
    const data = bytes(100, 32);
    const b = await client.upload(data);
    const url = `${base}/blobs/${b.id}`;
    const inverted = await fetch(url, { headers: { range: 'bytes=5-2' } });
    expect(inverted.status).toBe(200);
    expect((await inverted.arrayBuffer()).byteLength).toBe(100);
    const head = await fetch(url, { method: 'HEAD', headers: { range: 'bytes=0-9' } });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe('100');
    const beyond = await fetch(url, { headers: { range: 'bytes=100-' } });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe('bytes */100');
    expect(await beyond.text()).toContain('100 bytes');
    const stale = await fetch(url, { headers: { range: 'bytes=0-9', 'if-range': '"old"' } });
    expect(stale.status).toBe(200);
    const empty = await client.upload(new Uint8Array(0), { id: 'empty-blob' });
    const suffix = await fetch(`${base}/blobs/${empty.id}`, { headers: { range: 'bytes=-5' } });
    expect(suffix.status).toBe(200);
    expect(suffix.headers.get('content-range')).toBeNull();
    expect((await suffix.arrayBuffer()).byteLength).toBe(0);
    const from0 = await fetch(`${base}/blobs/${empty.id}`, { headers: { range: 'bytes=0-' } });
    expect(from0.status).toBe(416);
    expect(from0.headers.get('content-range')).toBe('bytes */0');
  });

  it('PUT /blobs/{id} (curl -T) and POST /blobs store a blob with its type and file name', async () => {
    const file = `${tmpName('upload')}.jpg`;
    const data = bytes(200_000, 33);
    writeFileSync(file, data);
    const curl = await exec('curl', [
      '-sS',
      '-T',
      file,
      '-H',
      'content-type: image/jpeg',
      '-H',
      'content-disposition: attachment; filename="holiday.jpg"',
      '-H',
      `authorization: Bearer ${process.env.HAYSTACK_TOKEN}`,
      '-w',
      '\n%{http_code}',
      `${base}/blobs/holiday-1`,
    ]);
    const [body, code] = curl.stdout.split(/\r?\n/).filter(Boolean);
    expect(code, curl.stdout + curl.stderr).toBe('201');
    expect(JSON.parse(body!)).toMatchObject({
      blobId: 'holiday-1',
      sha256: sha(data),
      fileName: 'holiday.jpg',
    });
    const st = await client.stat('holiday-1');
    expect(st.fileName).toBe('holiday.jpg');
    expect(st.contentType).toBe('image/jpeg');
    const get = await fetch(`${base}/blobs/holiday-1`);
    expect(get.headers.get('content-disposition')).toContain('filename="holiday.jpg"');
    expect(sha(new Uint8Array(await get.arrayBuffer()))).toBe(sha(data));
    // The same PUT again is idempotent (RFC 9110 §9.2.2): success, nothing new stored.
    const again = await fetch(`${base}/blobs/holiday-1`, { method: 'PUT', body: data });
    expect([200, 201]).toContain(again.status);
    // Other bytes under the same id: 409.
    const clash = await fetch(`${base}/blobs/holiday-1`, { method: 'PUT', body: bytes(5000, 99) });
    expect(clash.status).toBe(409);
    // POST with a Content-Digest: the id is the SHA-256, verified.
    const other = bytes(5000, 34);
    const digest = createHash('sha256').update(other).digest('base64');
    const post = await fetch(`${base}/blobs?file_name=${encodeURIComponent('été.png')}`, {
      method: 'POST',
      headers: { 'content-type': 'image/png', 'content-digest': `sha-256=:${digest}:` },
      body: other,
    });
    expect(post.status).toBe(201);
    expect(post.headers.get('location')).toBe(`/blobs/${sha(other)}`);
    expect((await client.stat(sha(other))).fileName).toBe('été.png');
    const unseen = createHash('sha256').update(bytes(5000, 36)).digest('base64');
    const wrong = await fetch(`${base}/blobs`, {
      method: 'POST',
      headers: { 'content-digest': `sha-256=:${unseen}:` },
      body: bytes(5000, 35),
    });
    expect(wrong.status).toBe(400);
    const tooBig = await fetch(`${base}/blobs/big-1`, {
      method: 'PUT',
      body: new Uint8Array(8 * 1024 * 1024 + 1),
    });
    expect(tooBig.status).toBe(413);
    expect(await tooBig.text()).toContain('MAX_UPLOAD_SIZE');
  });

  it('a client dribbling HTTP/1.1 headers a byte at a time gets 408 before they are complete (request_headers_timeout); Envoy keeps serving', async () => {
    const [host, port] = cluster.envoy!.address.split(':');
    const sock = net.connect(Number(port), host);
    const answer = new Promise<string>((resolve) => {
      let got = '';
      sock.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        if (got.includes('\r\n')) resolve(got);
      });
      sock.on('close', () => resolve(got));
      sock.on('error', () => {});
    });
    const r = await dribbleHeaders(sock, 40_000, answer);
    expect(r.answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(r.sent).toBeLessThan(r.of);
    sock.destroy();
    const b = await client.upload(bytes(1000, 37));
    expect((await client.download(b.id)).data.length).toBe(1000);
  }, 60_000);

  it('a slow reader with Connection: close gets every byte of a 200 with Content-Length', async () => {
    const data = bytes(7 * 1024 * 1024, 36);
    const b = await client.upload(data);
    const [host, port] = cluster.envoy!.address.split(':');
    const got = await new Promise<{ head: string; body: number }>((resolve, reject) => {
      const sock = net.connect({ host: host!, port: Number(port) }, () => {
        sock.write(
          `GET /blobs/${b.id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${process.env.HAYSTACK_TOKEN}\r\nConnection: close\r\n\r\n`,
        );
      });
      const parts: Buffer[] = [];
      // Read nothing for 3 s (Envoy's old 1 s delayed close would cut the body), then slowly.
      sock.pause();
      setTimeout(() => sock.resume(), 3000);
      sock.on('data', (d: Buffer) => {
        parts.push(d);
        sock.pause();
        setTimeout(() => sock.resume(), 5);
      });
      sock.on('error', reject);
      sock.on('close', () => {
        const all = Buffer.concat(parts);
        const split = all.indexOf('\r\n\r\n');
        resolve({ head: all.subarray(0, split).toString(), body: all.length - split - 4 });
      });
    });
    expect(got.head).toMatch(/^HTTP\/1.1 200/);
    expect(got.head.toLowerCase()).toContain(`content-length: ${data.length}`);
    expect(got.body).toBe(data.length);
  });
});
