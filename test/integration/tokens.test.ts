import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { DirectoryService } from '../../gen/haystack/v1/directory_pb.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster, FAST_ENV } from '../helpers/cluster.js';
import { adminTlsEnv, testTransport } from '../helpers/pki.js';
import { freePort } from '../helpers/redis.js';
import { bytes } from '../helpers/store-client.js';
import { codeOf, testAuthEnv, testSigningKeyFile, testToken, tokenTransport } from '../helpers/tokens.js';
import { exec, spawnServer, tmpName, tool } from '../helpers/tools.js';

/**
 * Issue 13, public access control, against real processes: Envoy (jwt_authn, RBAC, CORS), the
 * gateways (token, scope, prefix, signed URLs, content ids), grpcurl, curl-like fetches and the
 * CLI. Every refused call is checked to have changed nothing.
 */

const ALLOWED_ORIGIN = 'https://photos.example.com';
let cluster: Cluster;
let admin: HaystackClient;
const sha = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');

/** A gRPC transport through Envoy sending `token` ('' sends none). */
const viaEnvoy = (token: string) => tokenTransport(cluster.url, token);

/** The raw BlobService through Envoy with `token`. */
const blobsVia = (token: string) => createClient(BlobService, viaEnvoy(token));

/** grpcurl through Envoy with the proto files (no reflection: it is admin-only). */
function grpcurl(token: string, method: string, body: string) {
  return exec(tool('grpcurl'), [
    '-plaintext',
    '-import-path',
    'proto',
    '-proto',
    'haystack/v1/blob.proto',
    ...(token ? ['-H', `authorization: Bearer ${token}`] : []),
    '-d',
    body,
    cluster.envoy!.address,
    `haystack.v1.BlobService/${method}`,
  ]);
}

const get = (path: string, token = '', headers: Record<string, string> = {}) =>
  fetch(`${cluster.url}${path}`, {
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
  });

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 1,
    stores: 3,
    gateways: 2,
    replication: false,
    envoy: { corsOrigins: [ALLOWED_ORIGIN] },
  });
  admin = new HaystackClient({ url: cluster.url });
});
afterAll(async () => {
  await admin?.close();
  await cluster?.stop();
});

describe('tokens on every public method (through real Envoy)', () => {
  it('without, expired, wrong scope, outside the prefix, right token: precise status, nothing changed', async () => {
    const data = bytes(5000, 1301);
    await admin.upload(data, { id: 'u1-photo' });
    await admin.upload(data, { id: 'u2-photo' });
    const expired = await testToken('admin', { ttlSec: 60, nowMs: Date.now() - 3_600_000 });
    const reader = await testToken('blob:read', { prefix: 'u1-' });
    const writer = await testToken('blob:write', { prefix: 'u1-' });
    const deleter = await testToken('blob:delete', { prefix: 'u1-' });
    const lister = await testToken('blob:list', { prefix: 'u1-' });

    type Call = (c: ReturnType<typeof blobsVia>, id: string) => Promise<unknown>;
    const calls: Record<string, { call: Call; right: string }> = {
      Put: { call: (c, id) => c.put({ blobId: `${id}-new`, data: bytes(10, 1) }), right: writer },
      Stat: { call: (c, id) => c.stat({ blobId: id }), right: reader },
      Download: {
        call: async (c, id) => {
          for await (const _ of c.download({ blobId: id })) void _;
        },
        right: reader,
      },
      CreateSignedUrl: { call: (c, id) => c.createSignedUrl({ blobId: id }), right: reader },
      List: { call: (c, id) => c.list({ prefix: id.slice(0, 3) }), right: lister },
      Delete: { call: (c, id) => c.delete({ blobId: id }), right: deleter },
    };
    for (const [name, { call, right }] of Object.entries(calls)) {
      const none = await codeOf(call(blobsVia(''), 'u1-photo'));
      expect(none.code, `${name} without a token`).toBe('Unauthenticated');
      expect((await codeOf(call(blobsVia(expired), 'u1-photo'))).code, `${name} expired`).toBe(
        'Unauthenticated',
      );
      const wrong = right === reader ? writer : reader;
      const denied = await codeOf(call(blobsVia(wrong), 'u1-photo'));
      expect(denied.code, `${name} wrong scope`).toBe('PermissionDenied');
      expect(denied.message).toMatch(/lacks scope blob:/);
      const outside = await codeOf(call(blobsVia(right), 'u2-photo'));
      expect(outside.code, `${name} outside the prefix`).toBe('PermissionDenied');
      expect(outside.message).toMatch(/outside the token's prefix "u1-"/);
      // Nothing changed by any refused call.
      expect((await admin.stat('u1-photo')).sha256).toBe(sha(data));
      expect((await admin.stat('u2-photo')).sha256).toBe(sha(data));
      if (name === 'Put') expect((await codeOf(admin.stat('u1-photo-new'))).code).toBe('NotFound');
      expect((await codeOf(admin.stat('u2-photo-new'))).code).toBe('NotFound');
      expect((await codeOf(call(blobsVia(right), 'u1-photo'))).code, `${name} right token`).toBe('OK');
    }
    expect((await codeOf(admin.stat('u1-photo'))).code).toBe('NotFound'); // the right Delete ran
    expect((await admin.stat('u2-photo')).sha256).toBe(sha(data));
  });

  it('a client-streamed Upload with a read-only token is PERMISSION_DENIED before a byte is stored', async () => {
    const ro = new HaystackClient({ url: cluster.url, token: await testToken('blob:read blob:list') });
    try {
      const err = await ro.upload(bytes(70_000, 1302), { id: 'ro-upload' }).catch((e: unknown) => e);
      expect((err as { codeName?: string }).codeName).toBe('PERMISSION_DENIED');
      expect((await codeOf(admin.stat('ro-upload'))).code).toBe('NotFound');
    } finally {
      await ro.close();
    }
  });

  it('grpcurl: no token, a forged token, a wrong scope and the right token', async () => {
    await admin.upload(bytes(100, 1303), { id: 'g-1' });
    const body = '{"blob_id":"g-1"}';
    const none = await grpcurl('', 'Stat', body);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toMatch(/Code: Unauthenticated/);
    expect(none.stderr).toMatch(/Jwt is missing: send authorization: Bearer <token> \(haystack token create/);
    const good = await testToken('blob:read');
    const forged = `${good.slice(0, -4)}AAAA`;
    expect((await grpcurl(forged, 'Stat', body)).stderr).toMatch(/Code: Unauthenticated/);
    const del = await grpcurl(good, 'Delete', body);
    expect(del.stderr).toMatch(/Code: PermissionDenied/);
    const stat = await grpcurl(good, 'Stat', body);
    expect(stat.code, stat.stderr).toBe(0);
    // Only admin sees the cookie.
    expect(JSON.parse(stat.stdout).blob.cookie ?? '0').toBe('0');
    expect(
      (
        await admin.blobs.stat(
          { blobId: 'g-1' },
          { headers: { authorization: `Bearer ${process.env.HAYSTACK_TOKEN}` } },
        )
      ).blob?.cookie,
    ).not.toBe(0n);
  });

  it('direct gateway access: an Envoy-role caller needs a token too; an operator certificate is admin', async () => {
    await admin.upload(bytes(100, 1304), { id: 'direct-1' });
    const gw = cluster.gateways[0]!.address;
    const asEnvoy = createClient(BlobService, await testTransport(gw, 'gateway', { role: 'envoy', id: 'x' }));
    const none = await codeOf(asEnvoy.stat({ blobId: 'direct-1' }));
    expect(none.code).toBe('Unauthenticated');
    expect(none.message).toMatch(/missing token: send Authorization: Bearer/);
    const read = await testToken('blob:read');
    const ok = await asEnvoy.stat({ blobId: 'direct-1' }, { headers: { authorization: `Bearer ${read}` } });
    expect(ok.blob?.cookie).toBe(0n);
    const operator = createClient(BlobService, await testTransport(gw, 'gateway'));
    expect((await operator.stat({ blobId: 'direct-1' })).blob?.cookie).not.toBe(0n);
    // A token always decides, even on an operator's connection: it can only narrow.
    const narrowed = await codeOf(
      operator.delete({ blobId: 'direct-1' }, { headers: { authorization: `Bearer ${read}` } }),
    );
    expect(narrowed.code).toBe('PermissionDenied');
  });

  it('rotation: a token of a key the gateways do not hold is refused; the CLI signs with the test key', async () => {
    const { generateSigningKey } = await import('../../internal/auth/keys.js');
    const { createToken } = await import('../../internal/auth/token-sign.js');
    const stranger = await generateSigningKey('test-1'); // same kid, other key
    const t = await createToken(stranger.signing, {
      scopes: new Set(['admin']),
      prefix: '',
      ttlSec: 60,
      subject: 'mallory',
    });
    expect((await codeOf(blobsVia(t).stat({ blobId: 'g-1' }))).code).toBe('Unauthenticated');
    const cli = await exec(
      process.execPath,
      ['dist/cmd/haystack.js', 'token', 'create', '--scope', 'blob:read', '--prefix', 'g-', '--ttl', '10m'],
      { env: { ...process.env, HAYSTACK_SIGNING_KEY_FILE: await testSigningKeyFile() } },
    );
    expect(cli.code, cli.stderr).toBe(0);
    const token = cli.stdout.trim();
    expect((await blobsVia(token).stat({ blobId: 'g-1' })).blob?.blobId).toBe('g-1');
    expect((await codeOf(blobsVia(token).stat({ blobId: 'u2-photo' }))).code).toBe('PermissionDenied');
  });
});

describe('key rotation: two active keys (haystack token keygen)', () => {
  it('a gateway with the old and the new key accepts tokens of both; a third key is refused', async () => {
    const dir = tmpName('rotation');
    mkdirSync(dir, { recursive: true });
    const jwks = path.join(dir, 'jwks.json');
    copyFileSync((await testAuthEnv()).AUTH_JWKS_FILE as string, jwks);
    const cli = (args: string[], env: Record<string, string> = {}) =>
      exec(process.execPath, ['dist/cmd/haystack.js', 'token', ...args], { env: { ...process.env, ...env } });
    const keygen = await cli([
      'keygen',
      '--kid',
      'test-2',
      '--key-out',
      path.join(dir, 'k2.json'),
      '--jwks',
      jwks,
    ]);
    expect(keygen.code, keygen.stderr).toBe(0);
    expect(
      (JSON.parse(readFileSync(jwks, 'utf8')) as { keys: { kid: string }[] }).keys.map((k) => k.kid),
    ).toEqual(['test-1', 'test-2']);
    const gw = await spawnServer({
      name: 'gateway-rotation',
      args: ['gateway', '--listen', `127.0.0.1:${await freePort()}`],
      env: {
        ...FAST_ENV,
        DIRECTORY_ADDRS: cluster.directoryAddrs,
        AUTH_JWKS_FILE: jwks,
        GATEWAY_ID: 'gateway-rotation',
      },
    });
    try {
      const asEnvoy = createClient(
        BlobService,
        await testTransport(gw.address, 'gateway', { role: 'envoy', id: 'r' }),
      );
      await admin.upload(bytes(100, 1320), { id: 'rot-1' });
      const stat = (token: string) =>
        codeOf(asEnvoy.stat({ blobId: 'rot-1' }, { headers: { authorization: `Bearer ${token}` } }));
      const newToken = await cli(['create', '--scope', 'blob:read', '--key', path.join(dir, 'k2.json')]);
      expect(newToken.code, newToken.stderr).toBe(0);
      expect((await stat(newToken.stdout.trim())).code).toBe('OK');
      expect((await stat(await testToken('blob:read'))).code).toBe('OK');
      // The cluster's gateways do not hold test-2 yet: its tokens are refused there.
      expect((await codeOf(blobsVia(newToken.stdout.trim()).stat({ blobId: 'rot-1' }))).code).toBe(
        'Unauthenticated',
      );
      const other = await cli([
        'keygen',
        '--kid',
        'test-3',
        '--key-out',
        path.join(dir, 'k3.json'),
        '--jwks',
        path.join(dir, 'other.json'),
      ]);
      expect(other.code, other.stderr).toBe(0);
      const third = await cli(['create', '--scope', 'admin', '--key', path.join(dir, 'k3.json')]);
      const refused = await stat(third.stdout.trim());
      expect(refused.code).toBe('Unauthenticated');
      expect(refused.message).toMatch(/not active/);
    } finally {
      await gw.kill();
    }
  });
});

describe('public surface through Envoy', () => {
  it('directory reads and reflection need an admin token; BlobService does not leak topology', async () => {
    const dirVia = (token: string) => createClient(DirectoryService, viaEnvoy(token));
    expect((await codeOf(dirVia('').getClusterStatus({}))).code).toBe('Unauthenticated');
    const reader = await testToken('blob:read blob:write blob:list blob:delete');
    expect((await codeOf(dirVia(reader).getClusterStatus({}))).code).toBe('PermissionDenied');
    expect((await codeOf(dirVia(reader).locate({ blobIds: ['g-1'] }))).code).toBe('PermissionDenied');
    expect((await codeOf(dirVia(process.env.HAYSTACK_TOKEN ?? '').getClusterStatus({}))).code).toBe('OK');
    const listAs = (token: string) =>
      exec(tool('grpcurl'), [
        '-plaintext',
        '-H',
        `authorization: Bearer ${token}`,
        cluster.envoy!.address,
        'list',
      ]);
    const refused = await listAs(reader);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/PermissionDenied/);
    expect(refused.stderr).toMatch(/need a token with scope admin/);
    const listed = await listAs(process.env.HAYSTACK_TOKEN ?? '');
    expect(listed.stdout).toContain('haystack.v1.BlobService');
  });
});

describe('GET /blobs/{id}: tokens, signed URLs, no existence oracle', () => {
  it('plain GET without token: 401 with a Bearer challenge; wrong scope 403 insufficient_scope; token 200', async () => {
    const b = await admin.upload(bytes(2000, 1310), { id: 'h-1', contentType: 'image/png' });
    const anon = await get(`/blobs/${b.id}`);
    expect(anon.status).toBe(401);
    expect(anon.headers.get('www-authenticate')).toMatch(/^Bearer realm="haystack"/);
    expect(await anon.text()).toMatch(/token .* or a signed URL/);
    const writer = await get(`/blobs/${b.id}`, await testToken('blob:write'));
    expect(writer.status).toBe(403);
    expect(writer.headers.get('www-authenticate')).toMatch(/error="insufficient_scope", .*scope="blob:read"/);
    const bad = await get(`/blobs/${b.id}`, 'not.a.jwt');
    expect(bad.status).toBe(401);
    const ok = await get(`/blobs/${b.id}`, await testToken('blob:read'));
    expect(ok.status).toBe(200);
    expect(sha(new Uint8Array(await ok.arrayBuffer()))).toBe(b.sha256);
    // Uploads over HTTP need blob:write.
    const put = await fetch(`${cluster.url}/blobs/h-anon`, { method: 'PUT', body: 'x' });
    expect(put.status).toBe(401);
    expect((await codeOf(admin.stat('h-anon'))).code).toBe('NotFound');
  });

  it('signed URL: works before expiry, 401 after, 403 alike for an altered id, exp or sig and an unknown id', async () => {
    const b = await admin.upload(bytes(3000, 1311), { id: 's-1' });
    await admin.upload(bytes(3000, 1312), { id: 's-2' });
    const reader = new HaystackClient({
      url: cluster.url,
      token: await testToken('blob:read', { prefix: 's-' }),
    });
    try {
      const url = new URL(await reader.signedUrl(b.id, { ttlSeconds: 120 }));
      const res = await fetch(url);
      expect(res.status).toBe(200);
      expect(sha(new Uint8Array(await res.arrayBuffer()))).toBe(b.sha256);
      const exp = Number(url.searchParams.get('exp'));
      const sig = url.searchParams.get('sig') ?? '';
      const flip = (s: string) => (s[0] === 'A' ? 'B' : 'A') + s.slice(1);
      const variants = [
        `/blobs/s-2?exp=${exp}&sig=${sig}`, // another id
        `/blobs/s-1?exp=${exp + 1}&sig=${sig}`, // a later expiry
        `/blobs/s-1?exp=${exp}&sig=${flip(sig)}`, // another signature
        `/blobs/never-there?exp=${exp}&sig=${sig}`, // an unknown id
      ];
      const answers = await Promise.all(
        variants.map(async (p) => {
          const r = await get(p);
          return `${r.status} ${await r.text()}`;
        }),
      );
      expect(answers[0]).toMatch(/^403 /);
      expect(new Set(answers).size).toBe(1); // no existence oracle
      const past = Math.floor(Date.now() / 1000) - 1;
      const expired = await get(`/blobs/s-1?exp=${past}&sig=${sig}`);
      expect(expired.status).toBe(401);
      expect(await expired.text()).toMatch(/expired/);
      // Outside the reader's prefix: no URL is made.
      expect((await codeOf(reader.signedUrlPath('h-1'))).code).toBe('PermissionDenied');
      // The CLI makes one too (HAYSTACK_TOKEN = the suite's admin token).
      const cli = await exec(
        process.execPath,
        ['dist/cmd/haystack.js', '--url', cluster.url, 'url', 's-2', '--ttl', '5m'],
        {
          env: { ...process.env, ...(await adminTlsEnv()) },
        },
      );
      expect(cli.code, cli.stderr).toBe(0);
      expect((await fetch(cli.stdout.trim())).status).toBe(200);
    } finally {
      await reader.close();
    }
  });
});

describe('content ids are earned; CORS names its origins', () => {
  it('a Put whose 64-hex id is not the SHA-256 of its data is INVALID_ARGUMENT; the genuine upload then works', async () => {
    const world = new TextEncoder().encode('world');
    const id = sha(world);
    const squat = await codeOf(
      admin.blobs.put(
        { blobId: id, data: new TextEncoder().encode('EVIL') },
        {
          headers: { authorization: `Bearer ${process.env.HAYSTACK_TOKEN}` },
        },
      ),
    );
    expect(squat.code).toBe('InvalidArgument');
    expect(squat.message).toMatch(/looks like a SHA-256 content address/);
    const upper = await codeOf(
      admin.blobs.put(
        { blobId: id.toUpperCase(), data: world },
        {
          headers: { authorization: `Bearer ${process.env.HAYSTACK_TOKEN}` },
        },
      ),
    );
    expect(upper.code).toBe('InvalidArgument');
    const genuine = await admin.upload(world, { id });
    expect(genuine.sha256).toBe(id);
    const res = await get(`/blobs/${id}`, process.env.HAYSTACK_TOKEN);
    expect(await res.text()).toBe('world');
  });

  it('preflights: the allowed origin is echoed, a foreign one gets nothing', async () => {
    const preflight = (origin: string) =>
      fetch(`${cluster.url}/haystack.v1.BlobService/Delete`, {
        method: 'OPTIONS',
        headers: {
          origin,
          'access-control-request-method': 'POST',
          'access-control-request-headers': 'content-type,authorization',
        },
      });
    const ok = await preflight(ALLOWED_ORIGIN);
    expect(ok.headers.get('access-control-allow-origin')).toBe(ALLOWED_ORIGIN);
    expect(ok.headers.get('access-control-allow-headers')).toContain('authorization');
    const foreign = await preflight('https://evil.example');
    expect(foreign.headers.get('access-control-allow-origin')).toBeNull();
  });
});
