import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { HAYSTACK_BIN } from '../../internal/cli/processes.js';
import { HaystackClient, NotFoundError, UnavailableError } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { adminTlsEnv, httpsGet } from '../helpers/pki.js';
import { redisClient } from '../helpers/redis.js';
import { bytes } from '../helpers/store-client.js';
import { authFetch } from '../helpers/tokens.js';
import { exec, tmpName } from '../helpers/tools.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let cluster: Cluster;
let client: HaystackClient;
/** HAYSTACK_TLS_*: the CLI's admin certificate for calls straight to cluster members. */
let adminEnv: Record<string, string> = {};
const dir = tmpName('files');

function haystack(args: string[]) {
  return exec(process.execPath, [HAYSTACK_BIN, ...args], {
    env: { ...process.env, HAYSTACK_URL: cluster.url, ...adminEnv },
    timeoutMs: 120_000,
  });
}

/** Cache counts of one gateway (called directly, not through Envoy). */
async function gatewayCache(i: number) {
  const c = createClient(BlobService, cluster.transport(cluster.gateways[i]!.address, 'gateway'));
  const s = await c.getStats({});
  return { hits: Number(s.gateway?.hits), misses: Number(s.gateway?.misses), available: s.cacheAvailable };
}
async function totalHits() {
  const all = await Promise.all(cluster.gateways.map((_, i) => gatewayCache(i)));
  return all.reduce((n, g) => n + g.hits, 0);
}

beforeAll(async () => {
  cluster = await Cluster.start({
    gateways: 2,
    cacheRedis: true,
    gatewayEnv: { CACHE_MAX_BLOB_SIZE: '1MiB', CACHE_WARN_INTERVAL: '60s' },
  });
  client = new HaystackClient({ url: cluster.url });
  adminEnv = await adminTlsEnv();
  mkdirSync(dir, { recursive: true });
});
afterAll(async () => {
  await cluster?.stop();
});

describe('SDK round trips through Envoy', () => {
  it('uploads a file, downloads it byte-identical, stats, lists and deletes it', async () => {
    const file = `${dir}/photo.jpg`;
    const data = bytes(1_500_000, 21);
    writeFileSync(file, data);
    const stored = await client.uploadFile(file);
    expect(stored).toMatchObject({
      id: sha(data),
      size: data.length,
      sha256: sha(data),
      contentType: 'image/jpeg',
      replicas: 3,
    });
    const out = `${dir}/photo.out.jpg`;
    await client.downloadToFile(stored.id, out);
    expect(readFileSync(out).equals(data)).toBe(true);
    expect((await client.stat(stored.id)).createdAt.getTime()).toBeGreaterThan(Date.now() - 60_000);
    const ids: string[] = [];
    for await (const b of client.listAll()) ids.push(b.id);
    expect(ids).toContain(stored.id);
    expect(await client.delete(stored.id)).toBe(true);
    await expect(client.stat(stored.id)).rejects.toBeInstanceOf(NotFoundError);
    await expect(client.download(stored.id)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('uploads and downloads a 50 MiB file with progress, byte-identical', async () => {
    const file = `${dir}/big.bin`;
    const data = bytes(50 * 1024 * 1024, 22);
    writeFileSync(file, data);
    const up: number[] = [];
    const t0 = Date.now();
    const stored = await client.uploadFile(file, { onProgress: (sent) => up.push(sent) });
    const upMs = Date.now() - t0;
    expect(stored.size).toBe(data.length);
    expect(up.length).toBeGreaterThan(50);
    expect(up.at(-1)).toBe(data.length);
    expect(up.every((v, i) => i === 0 || v >= up[i - 1]!)).toBe(true);
    const down: number[] = [];
    const out = `${dir}/big.out`;
    await client.downloadToFile(stored.id, out, { onProgress: (got) => down.push(got) });
    expect(down.at(-1)).toBe(data.length);
    expect(readFileSync(out).equals(data)).toBe(true);
    console.log(`50 MiB: upload ${upMs} ms, download ${Date.now() - t0 - upMs} ms`);
  });

  it('uploads from a stream and from bytes; ranges come back exact', async () => {
    const data = bytes(300_000, 23);
    async function* gen() {
      for (let i = 0; i < data.length; i += 7777) yield data.subarray(i, i + 7777);
    }
    const a = await client.upload(gen(), { size: data.length, contentType: 'application/octet-stream' });
    expect(a.sha256).toBe(sha(data));
    const part = await client.download(a.id, { offset: 1000, length: 5000 });
    expect(Buffer.from(part.data).equals(data.subarray(1000, 6000))).toBe(true);
    const b = await client.upload(data, { id: 'named-blob.v1' });
    expect(b.id).toBe('named-blob.v1');
  });
});

describe('the package entry point', () => {
  it("is the SDK: import { HaystackClient } from 'haystack-blobstore'", async () => {
    const script = `import { HaystackClient } from 'haystack-blobstore';
      const c = new HaystackClient({ url: process.env.HAYSTACK_URL });
      const b = await c.upload(new TextEncoder().encode('from the package'));
      const { data } = await c.download(b.id);
      console.log(new TextDecoder().decode(data));`;
    const res = await exec(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, HAYSTACK_URL: cluster.url },
    });
    expect(res.stderr).toBe('');
    expect(res.stdout.trim()).toBe('from the package');
  });
});

describe('the haystack CLI on the SDK', () => {
  it('upload ("id  path" per file), download, status, ls, delete, with --json', async () => {
    const files = `${dir}/cli`;
    mkdirSync(files, { recursive: true });
    const contents = [bytes(10_000, 31), bytes(20_000, 32), bytes(30_000, 33)];
    for (const [i, c] of contents.entries()) writeFileSync(`${files}/f${i}.png`, c);
    const up = await haystack(['upload', files]);
    expect(up.code, up.stderr).toBe(0);
    const lines = up.stdout.trim().split('\n');
    expect(lines).toEqual(contents.map((c, i) => `${sha(c)}  ${files}/f${i}.png`));
    const ids = lines.map((l) => l.split('  ')[0]!);

    const out = `${dir}/cli-out.png`;
    const dl = await haystack(['download', ids[1]!, out]);
    expect(dl.code, dl.stderr).toBe(0);
    expect(readFileSync(out).equals(contents[1]!)).toBe(true);
    const toStdout = await exec(
      '/bin/sh',
      ['-c', `"${process.execPath}" "${HAYSTACK_BIN}" download ${ids[0]} | sha256sum`],
      {
        env: { ...process.env, HAYSTACK_URL: cluster.url },
      },
    );
    expect(toStdout.stdout.split(' ')[0]).toBe(ids[0]);

    const status = await haystack(['status', ids[2]!, '--json']);
    expect(status.code, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({
      id: ids[2],
      size: 30_000,
      contentType: 'image/png',
      replicas: 3,
    });
    const ls = await haystack(['ls', '--json']);
    const listed = ls.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).id);
    expect(listed).toEqual(expect.arrayContaining(ids));

    const del = await haystack(['delete', ids[2]!, '--json']);
    expect(JSON.parse(del.stdout)).toEqual({ id: ids[2], found: true });
    const gone = await haystack(['download', ids[2]!, `${dir}/nope`]);
    expect(gone.code).toBe(1);
    expect(gone.stderr.trim().split('\n')).toEqual([`haystack: NOT_FOUND: blob ${ids[2]} not found`]);
    const goneJson = await haystack(['status', ids[2]!, '--json']);
    expect(JSON.parse(goneJson.stdout).error.code).toBe('NOT_FOUND');
  }, 240_000);

  it('--version; - is stdin for upload and stdout for download', async () => {
    const v = await haystack(['--version']);
    expect(v.code).toBe(0);
    expect(v.stdout.trim()).toBe(
      JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version,
    );
    const data = bytes(12_345, 41);
    writeFileSync(`${dir}/stdin.bin`, data);
    const piped = await exec(
      '/bin/sh',
      ['-c', `"${process.execPath}" "${HAYSTACK_BIN}" upload - < "${dir}/stdin.bin"`],
      {
        env: { ...process.env, HAYSTACK_URL: cluster.url },
      },
    );
    expect(piped.code, piped.stderr).toBe(0);
    expect(piped.stdout.trim()).toBe(`${sha(data)}  -`);
    const st = await haystack(['status', sha(data), '--json']);
    expect(JSON.parse(st.stdout)).toMatchObject({
      size: 12_345,
      contentType: 'application/octet-stream',
      fileName: '',
    });
    const down = await exec(
      '/bin/sh',
      ['-c', `"${process.execPath}" "${HAYSTACK_BIN}" download ${sha(data)} - | sha256sum`],
      {
        env: { ...process.env, HAYSTACK_URL: cluster.url },
      },
    );
    expect(down.stdout.split(' ')[0]).toBe(sha(data));
    expect(existsSync('-')).toBe(false);
  }, 240_000);

  it('admin verbs: volumes, compact, scrub on every store (StoreService)', async () => {
    const vols = await haystack(['volumes', '--json']);
    expect(vols.code, vols.stderr).toBe(0);
    const docs = vols.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { store: string; volumes: unknown[] });
    expect(docs.map((d) => d.store).sort()).toEqual(['store-0', 'store-1', 'store-2']);
    expect(docs.every((d) => d.volumes.length >= 1)).toBe(true);
    const text = await haystack(['volumes', '--store', 'store-1']);
    expect(text.stdout).toMatch(/^store-1 .* volumes, .* used, .* free\n {2}volume \d+ /);
    const compact = await haystack(['compact', '--force', '--store', 'store-0', '--json']);
    expect(compact.code, compact.stderr).toBe(0);
    expect(JSON.parse(compact.stdout).compactions.length).toBeGreaterThanOrEqual(1);
    const scrub = await haystack(['scrub', '--json']);
    expect(scrub.code, scrub.stderr).toBe(0);
    const scrubs = scrub.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { needlesChecked: number; corrupt: unknown[] });
    expect(scrubs).toHaveLength(3);
    expect(scrubs.every((s) => s.needlesChecked > 0 && s.corrupt.length === 0)).toBe(true);
    const unknown = await haystack(['scrub', '--store', 'store-9']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('no store store-9');
  }, 240_000);

  it('shows a progress bar for a 50 MiB upload and round-trips it', async () => {
    const file = `${dir}/cli-big.bin`;
    const data = bytes(50 * 1024 * 1024, 34);
    writeFileSync(file, data);
    const up = await haystack(['upload', '--progress', file]);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout.trim()).toBe(`${sha(data)}  ${file}`);
    expect(up.stderr).toMatch(/cli-big\.bin \[.*\] 100% \| 50\.0 MiB \/ 50\.0 MiB/);
    const out = `${dir}/cli-big.out`;
    expect((await haystack(['download', sha(data), out])).code).toBe(0);
    expect(readFileSync(out).equals(data)).toBe(true);
  }, 240_000);

  // Five CLI runs and a wait of up to 60 s for replication to settle: 33–57 s at load 20–40
  // in fresh-clone runs, then twice over the default 60 s at load 30–40.
  it('stats and health report the cluster; errors are one line with a non-zero exit', async () => {
    const stats = await haystack(['stats', '--json']);
    expect(stats.code, stats.stderr).toBe(0);
    const doc = JSON.parse(stats.stdout);
    expect(doc.directories).toHaveLength(3);
    expect(doc.stores).toHaveLength(3);
    expect(doc.cache.backend).toBe('redis');
    const text = await haystack(['stats']);
    expect(text.stdout).toMatch(/directories \(leader directory-\d/);
    expect(text.stdout).toMatch(/cache +redis/);
    // Replication settles first: a blob still short of its target makes the cluster degraded.
    await expect
      .poll(async () => Number((await client.replicationStats()).blobsBelowTarget), { timeout: 60_000 })
      .toBe(0);
    const health = await haystack(['health', '--json']);
    expect(health.code, health.stdout + health.stderr).toBe(0);
    const lines = health.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    // The endpoint, three directories, three stores, then the cluster's verdict.
    expect(lines.length).toBe(1 + 3 + 3 + 1);
    expect(lines.slice(0, -1).every((l) => l.status === 'SERVING')).toBe(true);
    expect(lines.at(-1)).toEqual({ cluster: 'up', problems: [] });
    expect((await haystack(['health'])).stdout.trim().split('\n').at(-1)).toBe('cluster up');
    const unreachable = await exec(
      process.execPath,
      [HAYSTACK_BIN, '--url', 'http://127.0.0.1:1', 'status', 'x'],
      {
        env: { ...process.env },
      },
    );
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr.trim().split('\n')).toHaveLength(1);
    expect(unreachable.stderr).toMatch(/^haystack: UNAVAILABLE: /);
  }, 180_000);
});

describe('the blob cache (Redis)', () => {
  it('misses the first read of an uncached blob and hits the second', async () => {
    const data = bytes(200_000, 41);
    const b = await client.upload(data);
    // Push-on-write cached it; evict it as Redis would under memory pressure.
    const redis = redisClient(cluster.cacheRedis!.url);
    expect(await redis.del(`haystack:blob:${b.id}`)).toBe(1);
    await redis.quit();
    const before = await totalHits();
    expect(Buffer.from((await client.download(b.id)).data).equals(data)).toBe(true);
    expect(await totalHits()).toBe(before);
    expect(Buffer.from((await client.download(b.id)).data).equals(data)).toBe(true);
    expect(await totalHits()).toBe(before + 1);
    // /blobs/{id} reads through the same cache.
    const res = await authFetch(`${cluster.url}/blobs/${b.id}`);
    expect(Buffer.from(await res.arrayBuffer()).equals(data)).toBe(true);
    expect(await totalHits()).toBe(before + 2);
    // Blobs above CACHE_MAX_BLOB_SIZE are never cached.
    const big = await client.upload(bytes(1024 * 1024 + 1, 42));
    await client.download(big.id);
    await client.download(big.id);
    expect(await totalHits()).toBe(before + 2);
    const stats = await client.gatewayStats();
    expect(stats.cacheBackend).toBe('redis');
    expect(stats.cluster.hitRate).toBeGreaterThan(0);
    // And in Prometheus metrics.
    const metrics = (await httpsGet(`https://${cluster.gateways[0]!.address}/metrics`)).body;
    expect(metrics).toMatch(/haystack_gateway_cache_lookups_total\{[^}]*result="(hit|miss)"[^}]*\} \d+/);
    // Unlabelled since the process-info metric replaced the app's own instance label.
    expect(metrics).toMatch(/haystack_gateway_cache_hit_ratio(\{[^}]*\})? [\d.]+/);
    expect(metrics).toMatch(/haystack_gateway_cache_available(\{[^}]*\})? 1/);
  });

  it('keeps reads and writes working while Redis is down, and caches again once it is back', async () => {
    const data = bytes(100_000, 43);
    const b = await client.upload(data);
    await cluster.cacheRedis!.kill();
    for (let i = 0; i < 2; i++) await expect.poll(async () => (await gatewayCache(i)).available).toBe(false);
    for (let i = 0; i < 10; i++) {
      expect(Buffer.from((await client.download(b.id)).data).equals(data)).toBe(true);
    }
    const during = bytes(50_000, 44);
    const c = await client.upload(during);
    expect(Buffer.from((await client.download(c.id)).data).equals(during)).toBe(true);
    // A delete is acknowledged only once the cache was told (docs/edge.md, Cache): done on
    // the stores, but UNAVAILABLE (after the SDK's retries) while the cache cannot be.
    await expect(client.delete(b.id)).rejects.toBeInstanceOf(UnavailableError);
    const logs = cluster.gateways.map((g) => g.logs()).join('');
    // One warning per interval, not one per request.
    expect(logs.match(/redis cache unavailable/g)?.length ?? 0).toBeLessThanOrEqual(4);

    await cluster.cacheRedis!.restart();
    for (let i = 0; i < 2; i++) {
      await expect.poll(async () => (await gatewayCache(i)).available, { timeout: 10_000 }).toBe(true);
    }
    // Redis came back empty: no fill is leased until a gateway has put the shared commit
    // index back from the directory leader's (docs/edge.md, Cache), which takes an RPC.
    const redis = redisClient(cluster.cacheRedis!.url);
    await expect.poll(() => redis.exists('haystack:commit-index'), { timeout: 10_000 }).toBe(1);
    await redis.quit();
    await client.download(c.id); // fill
    const before = await totalHits();
    expect(Buffer.from((await client.download(c.id)).data).equals(during)).toBe(true);
    expect(await totalHits()).toBe(before + 1);
    expect(await client.delete(b.id)).toBe(false); // the retry: nothing left on the stores, the cache told
    await expect(client.download(b.id)).rejects.toBeInstanceOf(NotFoundError);
  });
});

// Last: it kills a store.
describe('haystack health with a store down', () => {
  it('says the cluster is degraded, naming the DOWN store, and exits 1', async () => {
    await cluster.stores[2]?.kill();
    await expect
      .poll(
        async () => {
          const r = await haystack(['health']);
          return `${r.code} ${r.stdout.trim().split('\n').at(-1)}`;
        },
        { timeout: 60_000, interval: 1000 },
      )
      // Blobs or placement groups that lost their copy on store-2 may be reported too.
      .toMatch(
        /^1 degraded: 1 store DOWN \(store-2\)( · \d+ (blobs? below target|placement groups? below size \(being rebuilt\)))*$/,
      );
    const json = await haystack(['health', '--json']);
    expect(json.code).toBe(1);
    const lines = json.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines.at(-1)).toMatchObject({ cluster: 'degraded' });
    expect(lines.at(-1).problems[0]).toBe('1 store DOWN (store-2)');
    expect(lines.filter((l) => l.status && l.status !== 'SERVING')).toHaveLength(1);
    expect(json.stderr).toMatch(/^haystack: UNAVAILABLE: 1 of 7 not serving$/m);
  }, 120_000);
});
