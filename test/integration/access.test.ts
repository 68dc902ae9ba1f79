import { createHash } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { generateSigningKey } from '../../internal/auth/keys.js';
import { parseScopes } from '../../internal/auth/scopes.js';
import { createToken } from '../../internal/auth/token-sign.js';
import { type EnvoyProcess, startEnvoy } from '../../internal/edge/envoy-process.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { adminTlsEnv, httpsGet, testTransport } from '../helpers/pki.js';
import { freePort } from '../helpers/redis.js';
import { bytes } from '../helpers/store-client.js';
import { codeOf, testAuthEnv, testToken, tokenTransport } from '../helpers/tokens.js';
import { exec, tmpName, tool } from '../helpers/tools.js';

/**
 * Issue 13, the rest of the public model, against real processes: per-client rate limits in a
 * real Envoy (token subject, client address), the Haystack cookie on every public read path
 * (capability URLs, the stores' answers), and token-key rotation without a restart (gateways
 * re-read AUTH_JWKS_FILE, Envoy refetches the JWKS).
 */

let cluster: Cluster;
let admin: HaystackClient;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const blobsVia = (url: string, token: string) => createClient(BlobService, tokenTransport(url, token));

/** GET through Envoy from a chosen loopback source address (127.0.0.0/8 is all local). */
function getFrom(
  url: string,
  localAddress: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Buffer; limited: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { localAddress, headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          body: Buffer.concat(parts),
          limited: String(res.headers['x-haystack-rate-limited'] ?? ''),
        }),
      );
    });
    req.on('error', reject);
  });
}

/** Every store's haystack_store_read_cookie_checks_total, summed per result. */
async function cookieChecks(): Promise<Record<'skipped' | 'passed' | 'refused', number>> {
  const sum = { skipped: 0, passed: 0, refused: 0 };
  for (const s of cluster.stores) {
    const text = (await httpsGet(`https://${s.address}/metrics`)).body;
    for (const m of text.matchAll(
      /^haystack_store_read_cookie_checks_total\{[^}]*result="(\w+)"[^}]*\} (\d+)/gm,
    )) {
      sum[m[1] as keyof typeof sum] += Number(m[2]);
    }
  }
  return sum;
}

/** Polls `check` until it returns true (generous deadline: the box is shared). */
async function until(what: string, check: () => Promise<boolean>, deadlineMs = 60_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 1,
    stores: 3,
    gateways: 2,
    replication: false,
    // Blobs above 1 KiB are never cached: their reads always reach the stores.
    // Keys re-read often, and Envoy keeps a fetched JWKS for 1 s: rotations land quickly.
    gatewayEnv: { CACHE_MAX_BLOB_SIZE: '1KiB', AUTH_JWKS_RELOAD_INTERVAL: '200ms' },
    envoy: { auth: { jwksCacheSec: 1 } },
  });
  admin = new HaystackClient({ url: cluster.url });
});
afterAll(async () => {
  await admin?.close();
  await cluster?.stop();
});

describe('per-client rate limits at the edge (Envoy local_ratelimit descriptors)', () => {
  let edge: EnvoyProcess;
  let edgeUrl: string;

  beforeAll(async () => {
    // A second Envoy in front of the same gateways, with tight buckets that do not refill
    // within the test (5 reads, 2 deletes per client per hour): counts, not timing.
    const h = async () => ({ host: '127.0.0.1', port: await freePort() });
    const dir = tmpName('envoy-limits');
    edge = await startEnvoy({
      bin: tool('envoy'),
      dir,
      config: {
        ...cluster.envoyConfig!,
        listen: await h(),
        admin: await h(),
        accessLogPath: `${dir}/access.log`,
        readRateLimit: { maxTokens: 5, tokensPerFill: 5, fillIntervalMs: 3_600_000 },
        deleteRateLimit: { maxTokens: 2, tokensPerFill: 2, fillIntervalMs: 3_600_000 },
      },
    });
    await edge.waitHealthy('gateways', 2);
    edgeUrl = `http://${edge.address}`;
  });
  afterAll(async () => {
    await edge?.stop();
  });

  it('two token holders, one flooding: the flooder gets RESOURCE_EXHAUSTED / 429, the quiet one is not throttled', async () => {
    const b = await admin.upload(bytes(3000, 1401), { id: 'rl-1' });
    const flooder = await testToken('blob:read blob:delete', { subject: 'flooder' });
    const quiet = await testToken('blob:read blob:delete', { subject: 'quiet' });
    const stat = async (token: string) =>
      (await codeOf(blobsVia(edgeUrl, token).stat({ blobId: b.id }))).code;

    const flood: string[] = [];
    for (let i = 0; i < 12; i++) flood.push(await stat(flooder));
    expect(flood.slice(0, 5)).toEqual(Array(5).fill('OK'));
    expect(flood.slice(5)).toEqual(Array(7).fill('ResourceExhausted'));
    // The bucket is the subject's, not the token's: another token for "flooder" is throttled too.
    expect(await stat(await testToken('blob:read', { subject: 'flooder' }))).toBe('ResourceExhausted');
    // The quiet client has its own bucket, untouched by the flood.
    for (let i = 0; i < 5; i++) expect(await stat(quiet), `quiet call ${i}`).toBe('OK');

    // Plain HTTP with the flooder's token: 429 naming the limit (this route has its own bucket).
    const gets = [];
    for (let i = 0; i < 7; i++)
      gets.push(
        await getFrom(`${edgeUrl}/blobs/${b.id}`, '127.0.0.1', { authorization: `Bearer ${flooder}` }),
      );
    expect(gets.map((g) => g.status)).toEqual([200, 200, 200, 200, 200, 429, 429]);
    expect(gets[6]!.limited).toBe('read_rate_limit');
    expect(
      (await getFrom(`${edgeUrl}/blobs/${b.id}`, '127.0.0.1', { authorization: `Bearer ${quiet}` })).status,
    ).toBe(200);

    // Deletes: their own per-client bucket (2); the quiet client's deletes still run.
    await admin.upload(bytes(10, 1402), { id: 'rl-del-q' });
    const del = (token: string, id: string) => codeOf(blobsVia(edgeUrl, token).delete({ blobId: id }));
    const floods = [];
    for (let i = 0; i < 4; i++) floods.push((await del(flooder, `rl-del-none-${i}`)).code);
    expect(floods).toEqual(['OK', 'OK', 'ResourceExhausted', 'ResourceExhausted']);
    expect((await del(quiet, 'rl-del-q')).code).toBe('OK');
    expect((await codeOf(admin.stat('rl-del-q'))).code).toBe('NotFound');
  });

  it('anonymous readers (a signed URL) are keyed by client address: one address flooding leaves another served', async () => {
    const b = await admin.upload(bytes(2500, 1403), { id: 'rl-anon' });
    const url = new URL(await admin.signedUrl(b.id, { ttlSeconds: 600 }));
    const at = `${edgeUrl}${url.pathname}${url.search}`;
    const flood = [];
    for (let i = 0; i < 8; i++) flood.push((await getFrom(at, '127.0.0.2')).status);
    expect(flood).toEqual([200, 200, 200, 200, 200, 429, 429, 429]);
    const other = await getFrom(at, '127.0.0.3');
    expect(other.status).toBe(200);
    expect(sha(other.body)).toBe(b.sha256);
    // A token holder is keyed by its subject, not by the flooding address it shares.
    const reader = await testToken('blob:read', { subject: 'same-host' });
    expect(
      (await getFrom(`${edgeUrl}/blobs/${b.id}`, '127.0.0.2', { authorization: `Bearer ${reader}` })).status,
    ).toBe(200);
  });
});

describe('rate-limit settings', () => {
  it('a malformed EDGE_*_RATE_LIMIT stops haystack dev at start, naming the variable (exit 2)', async () => {
    const r = await exec(process.execPath, ['dist/cmd/haystack.js', 'dev', '--data', tmpName('dev-bad')], {
      env: { ...process.env, EDGE_READ_RATE_LIMIT: '10/10ms' },
    });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(
      /^haystack dev: invalid configuration:\n {2}EDGE_READ_RATE_LIMIT="10\/10ms": expected TOKENS\/PERIOD\[:BURST\]/,
    );
  });
});

describe('the Haystack cookie on every public read path', () => {
  it('capability URL /blobs/{id}/{cookie}: served without a token; a wrong cookie, a deleted and an unknown id answer the same', async () => {
    // 5000 bytes: above CACHE_MAX_BLOB_SIZE, so every read goes to the stores with the cookie.
    const big = await admin.upload(bytes(5000, 1410), { id: 'cap-big' });
    const small = await admin.upload(bytes(500, 1411), { id: 'cap-small' }); // cached
    const gone = await admin.upload(bytes(5000, 1412), { id: 'cap-gone' });
    const goneUrl = await admin.capabilityUrl(gone.id);
    await admin.delete(gone.id);

    for (const b of [big, small]) {
      const url = await admin.capabilityUrl(b.id);
      expect(url).toMatch(new RegExp(`/blobs/${b.id}/[0-9a-f]{16}$`));
      const res = await fetch(url);
      expect(res.status, b.id).toBe(200);
      expect(sha(new Uint8Array(await res.arrayBuffer()))).toBe(b.sha256);
      const range = await fetch(url, { headers: { range: 'bytes=10-19' } });
      expect(range.status).toBe(206);
      expect((await range.arrayBuffer()).byteLength).toBe(10);
    }
    const cookieOf = async (id: string) => new URL(await admin.capabilityUrl(id)).pathname.split('/').pop()!;
    const wrong = (c: string) => c.slice(0, 15) + (c[15] === '0' ? '1' : '0');
    const cookie = await cookieOf(big.id);
    const smallCookie = await cookieOf(small.id);
    // The stores themselves refuse a wrong cookie of an uncached blob (not only the gateway).
    const before = await cookieChecks();
    expect((await fetch(`${cluster.url}/blobs/${big.id}/${wrong(cookie)}`)).status).toBe(404);
    const after = await cookieChecks();
    expect(after.refused).toBeGreaterThan(before.refused);
    expect(after.skipped).toBe(before.skipped); // a capability read never asks without its cookie
    expect((await fetch(`${cluster.url}/blobs/${big.id}/${cookie}`)).status).toBe(200);
    expect((await cookieChecks()).passed).toBeGreaterThan(after.passed);
    const answers = await Promise.all(
      [
        `/blobs/${big.id}/${wrong(cookie)}`, // a wrong cookie (the stores refuse it)
        `/blobs/${small.id}/${wrong(smallCookie)}`, // a wrong cookie of a cached blob
        `/blobs/cap-never-there/${cookie}`, // an unknown id
        new URL(goneUrl).pathname, // a deleted blob with its right cookie
        `/blobs/${small.id}/${cookie}`, // another blob's cookie
      ].map(async (p) => {
        const r = await fetch(`${cluster.url}${p}`);
        return `${r.status} ${await r.text()}`;
      }),
    );
    expect(answers[0]).toMatch(/^404 no blob with this id and cookie/);
    expect(new Set(answers).size).toBe(1); // no existence oracle
    expect((await fetch(`${cluster.url}/blobs/${big.id}/DEADBEEF`)).status).toBe(400);
    expect((await fetch(`${cluster.url}/blobs/${big.id}/${cookie}/more`)).status).toBe(404);
  });

  it('the cookie reaches only admin: a reader cannot make a capability URL and sees cookie 0; the CLI makes one', async () => {
    const b = await admin.upload(bytes(3000, 1420), { id: 'ck-1' });
    const readerToken = await testToken('blob:read blob:list', { subject: 'reader' });
    const reader = new HaystackClient({ url: cluster.url, token: readerToken });
    try {
      const denied = await codeOf(reader.capabilityUrlPath(b.id));
      expect(denied.code).toBe('PermissionDenied');
      expect(denied.message).toMatch(/only admin tokens see/);
      const asReader = blobsVia(cluster.url, readerToken);
      expect((await asReader.stat({ blobId: b.id })).blob?.cookie).toBe(0n);
      expect((await asReader.list({ prefix: 'ck-' })).blobs.map((x) => x.cookie)).toEqual([0n]);
      expect(
        (await blobsVia(cluster.url, process.env.HAYSTACK_TOKEN ?? '').stat({ blobId: b.id })).blob?.cookie,
      ).not.toBe(0n);
      // The signed URL a reader may make carries the cookie only inside its MAC.
      const signed = await reader.signedUrl(b.id);
      const cookieHex = new URL(await admin.capabilityUrl(b.id)).pathname.split('/').pop()!;
      expect(signed).not.toContain(cookieHex);
      expect(signed).not.toContain(BigInt(`0x${cookieHex}`).toString());
    } finally {
      await reader.close();
    }
    const cli = await exec(
      process.execPath,
      ['dist/cmd/haystack.js', '--url', cluster.url, 'url', b.id, '--capability'],
      { env: { ...process.env, ...(await adminTlsEnv()) } },
    );
    expect(cli.code, cli.stderr).toBe(0);
    const res = await fetch(cli.stdout.trim());
    expect(res.status).toBe(200);
    expect(sha(new Uint8Array(await res.arrayBuffer()))).toBe(b.sha256);
  });

  it('a store answers a wrong cookie, a deleted blob and an unknown id with one NOT_FOUND (gRPC); 0 is for internal callers', async () => {
    const b = await admin.upload(bytes(3000, 1430), { id: 'st-1' });
    await admin.upload(bytes(3000, 1431), { id: 'st-gone' });
    const cookie = (await blobsVia(cluster.url, process.env.HAYSTACK_TOKEN ?? '').stat({ blobId: b.id }))
      .blob!.cookie;
    const goneCookie = (
      await blobsVia(cluster.url, process.env.HAYSTACK_TOKEN ?? '').stat({ blobId: 'st-gone' })
    ).blob!.cookie;
    await admin.delete('st-gone');
    // Every store holds every blob here (3 stores, 3 replicas); ask the first as a gateway would.
    const store = createClient(
      StoreService,
      await testTransport(cluster.stores[0]!.address, 'store', { role: 'gateway', id: 'gateway-probe' }),
    );
    const read = async (blobId: string, c: bigint) => {
      const r = await codeOf(
        (async () => {
          for await (const _ of store.read({ blobId, cookie: c })) void _;
        })(),
      );
      return `${r.code} ${r.message.replace(blobId, '<id>')}`;
    };
    const stat = async (blobId: string, c: bigint) => {
      const r = await codeOf(store.stat({ blobId, cookie: c }));
      return `${r.code} ${r.message.replace(blobId, '<id>')}`;
    };
    const answers = [
      await read(b.id, cookie ^ 0xffn),
      await read('st-gone', goneCookie),
      await read('st-never', cookie),
      await stat(b.id, cookie ^ 0xffn),
      await stat('st-gone', goneCookie),
      await stat('st-never', cookie),
    ];
    expect(new Set(answers)).toEqual(new Set(['NotFound blob <id> is not on this store']));
    expect(await read(b.id, cookie)).toBe('OK ');
    expect(await read(b.id, 0n)).toBe('OK ');
  });
});

describe('token-key rotation without a restart', () => {
  it('a key added to AUTH_JWKS_FILE is accepted by Envoy and every gateway; a removed one is refused', async () => {
    const file = (await testAuthEnv()).AUTH_JWKS_FILE as string;
    const original = readFileSync(file, 'utf8');
    const suiteKey = (JSON.parse(original) as { keys: unknown[] }).keys[0];
    const write = (keys: unknown[]) => {
      writeFileSync(`${file}.new`, JSON.stringify({ keys }));
      renameSync(`${file}.new`, file);
    };
    const older = await generateSigningKey('rot-old');
    const newer = await generateSigningKey('rot-new');
    const token = (k: typeof older) =>
      createToken(k.signing, {
        scopes: parseScopes('blob:read'),
        prefix: '',
        ttlSec: 600,
        subject: 'rotation',
      });
    const [tOld, tNew] = [await token(older), await token(newer)];
    await admin.upload(bytes(100, 1440), { id: 'rot-blob' });
    const gateways = await Promise.all(
      cluster.gateways.map(async (g) =>
        createClient(
          BlobService,
          await testTransport(g.address, 'gateway', { role: 'envoy', id: 'rotation' }),
        ),
      ),
    );
    /** The code of a Stat with `t` through Envoy and at each gateway directly. */
    const everywhere = async (t: string) => [
      (await codeOf(blobsVia(cluster.url, t).stat({ blobId: 'rot-blob' }))).code,
      ...(await Promise.all(
        gateways.map(
          async (g) =>
            (
              await codeOf(g.stat({ blobId: 'rot-blob' }, { headers: { authorization: `Bearer ${t}` } }))
            ).code,
        ),
      )),
    ];
    const all = (code: string) => Array(1 + gateways.length).fill(code);
    try {
      expect(await everywhere(tOld)).toEqual(all('Unauthenticated'));
      write([suiteKey, older.publicJwk]);
      await until('the added key is accepted everywhere', async () =>
        (await everywhere(tOld)).every((c) => c === 'OK'),
      );
      // Rotation: the new key in, the old one out, in one change of the file.
      write([suiteKey, newer.publicJwk]);
      await until('the new key is accepted and the removed one refused everywhere', async () => {
        const [n, o] = [await everywhere(tNew), await everywhere(tOld)];
        return n.every((c) => c === 'OK') && o.every((c) => c === 'Unauthenticated');
      });
      // The JWKS the gateways serve (what Envoy fetches) is the new one.
      const served = (await (await fetch(`${cluster.url}/.well-known/jwks.json`)).json()) as {
        keys: { kid: string }[];
      };
      expect(served.keys.map((k) => k.kid)).toEqual(['test-1', 'rot-new']);
      // The suite's own tokens were never interrupted.
      expect((await codeOf(admin.stat('rot-blob'))).code).toBe('OK');
    } finally {
      writeFileSync(file, original);
    }
  });
});
