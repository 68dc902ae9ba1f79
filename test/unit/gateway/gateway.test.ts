import { createHash } from 'node:crypto';
import { Code, ConnectError } from '@connectrpc/connect';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { MemoryBlobCache } from '../../../internal/cache/memory-cache.js';
import { BlobGateway, range } from '../../../internal/gateway/blobs.js';
import { PlacementView } from '../../../internal/gateway/placement-view.js';
import { bytes } from '../../helpers/store-client.js';
import { fakeCluster, leaderEntry } from './fakes.js';

const log = pino({ level: 'silent' });
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function setup(opts: { maxUpload?: number; cacheMax?: number; storeTimeoutMs?: number } = {}) {
  const c = fakeCluster();
  const cache = new MemoryBlobCache({ ttlMs: 60_000, maxBlobSize: opts.cacheMax ?? 10_000, maxBytes: 1e8 });
  const failovers: string[] = [];
  const gw = new BlobGateway({
    directory: c.directory,
    store: (s) => c.storeApi(s.address),
    cache,
    log,
    maxUploadSize: opts.maxUpload ?? 1e7,
    storeTimeoutMs: opts.storeTimeoutMs ?? 200,
    onFailover: (id) => failovers.push(id),
  });
  return { ...c, cache, gw, failovers };
}

/** A gateway on the same directory and stores without a cache (another gateway). */
function fresh(gw: BlobGateway): BlobGateway {
  const o = (gw as unknown as { o: ConstructorParameters<typeof BlobGateway>[0] }).o;
  return new BlobGateway({ ...o, cache: new MemoryBlobCache({ ttlMs: 1, maxBlobSize: 0, maxBytes: 0 }) });
}

async function* chunked(data: Uint8Array, size = 777) {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

async function readAll(gw: BlobGateway, id: string, offset = 0, length = 0) {
  const o = await gw.open(id, offset, length);
  const parts: Uint8Array[] = [];
  for await (const c of o.chunks) parts.push(c);
  return { ...o, data: Buffer.concat(parts) };
}

const header = (
  size: number,
  extra: Partial<{ blobId: string; sha256: string; contentType: string }> = {},
) => ({
  blobId: '',
  size: BigInt(size),
  contentType: '',
  sha256: '',
  replicaCount: 0,
  ...extra,
});

describe('BlobGateway writes', () => {
  it('allocates, streams to the first store with the others as forward_to, commits, and answers BlobInfo', async () => {
    const { gw, stores, directory } = setup();
    const data = bytes(50_000, 1);
    const info = await gw.write(
      header(data.length, { blobId: 'photo-1', contentType: 'image/jpeg' }),
      chunked(data),
    );
    expect(info.blobId).toBe('photo-1');
    expect(info.size).toBe(50_000n);
    expect(info.sha256).toBe(sha(data));
    expect(info.contentType).toBe('image/jpeg');
    expect(info.replicaCount).toBe(3);
    for (const s of stores) expect(s.blobs.get('photo-1')?.data.equals(data)).toBe(true);
    expect(directory.blobs.get('photo-1')?.cookie).toBe(directory.allocated.get('photo-1'));
  });

  it('names a blob by its SHA-256 when the header gives one, else picks a random id', async () => {
    const { gw } = setup();
    const data = bytes(100, 2);
    expect((await gw.write(header(100, { sha256: sha(data) }), chunked(data))).blobId).toBe(sha(data));
    const random = await gw.write(header(100), chunked(bytes(100, 3)));
    expect(random.blobId).toMatch(/^[A-Za-z0-9_-]{22}$/);
  });

  it('refuses oversized uploads before allocating, with RESOURCE_EXHAUSTED naming the limit', async () => {
    const { gw, directory } = setup({ maxUpload: 1000 });
    const err = await gw.write(header(1001), chunked(bytes(1001, 1))).catch((e) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.ResourceExhausted);
    expect((err as ConnectError).rawMessage).toContain('MAX_UPLOAD_SIZE');
    expect(directory.allocated.size).toBe(0);
  });

  it.each([
    ['more bytes than announced', 10, bytes(11, 1), /more than the 10 bytes/],
    ['fewer bytes than announced', 12, bytes(11, 1), /ended after 11 of the 12 bytes/],
  ])('fails an upload carrying %s with INVALID_ARGUMENT and commits nothing', async (_n, size, data, msg) => {
    const { gw, directory } = setup();
    const err = (await gw.write(header(size), chunked(data, 4)).catch((e) => e)) as ConnectError;
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(msg);
    expect(directory.commits).toBe(0);
  });

  it('fails a SHA-256 mismatch with INVALID_ARGUMENT and commits nothing', async () => {
    const { gw, directory } = setup();
    const err = (await gw
      .write(header(100, { sha256: 'a'.repeat(64) }), chunked(bytes(100, 1)))
      .catch((e) => e)) as ConnectError;
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toContain('does not match');
    expect(directory.commits).toBe(0);
  });

  it.each([
    [{ blobId: 'bad/id' }, /only letters, digits/],
    [{ sha256: 'XYZ' }, /64 lower-case hex/],
    [{ contentType: 'text/plain\r\nx: y' }, /not a MIME type/],
  ])('rejects a bad header %o with INVALID_ARGUMENT', async (extra, msg) => {
    const { gw } = setup();
    const err = (await gw.write(header(1, extra), chunked(bytes(1, 1))).catch((e) => e)) as ConnectError;
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toMatch(msg);
  });

  it('does not commit when the store write fails, and passes its status on', async () => {
    const { gw, stores, directory } = setup();
    stores[0]!.writeMode = 'fail';
    const err = (await gw.write(header(100), chunked(bytes(100, 1))).catch((e) => e)) as ConnectError;
    expect(err.code).toBe(Code.Unavailable);
    expect(directory.commits).toBe(0);
  });

  it("answers UNAVAILABLE when the store refuses the gateway's directory term as deposed (its view lags: N5)", async () => {
    const { gw, stores, directory } = setup();
    stores[0]!.writeMode = 'deposed';
    const err = (await gw.write(header(100), chunked(bytes(100, 2))).catch((e) => e)) as ConnectError;
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toMatch(
      /has seen directory term 99, this gateway's placement view is at term \d+/,
    );
    expect(directory.commits).toBe(0);
  });

  it('tells its placement view the newer term a store named, so the view can leave a directory behind it', async () => {
    const c = fakeCluster();
    // A loaded view (no placement groups: writes take the directory path) at term 5.
    const asked: { nextSource?: boolean }[] = [];
    const view = new PlacementView(
      async function* (req, signal) {
        asked.push({ nextSource: req.nextSource });
        if (req.fromIndex === 0n) yield leaderEntry(1n, 5n, 'directory-0');
        await new Promise((r) => signal?.addEventListener('abort', r, { once: true }));
      },
      'gw-test',
      log,
      10,
    );
    view.start();
    try {
      await view.whenReady(5_000);
      const gw = new BlobGateway({
        directory: c.directory,
        store: (s) => c.storeApi(s.address),
        cache: new MemoryBlobCache({ ttlMs: 60_000, maxBlobSize: 0, maxBytes: 1e8 }),
        log,
        maxUploadSize: 1e7,
        storeTimeoutMs: 200,
        placement: {
          view,
          stores: () => {
            throw new Error('no placement groups: the directory path writes');
          },
          readyTimeoutMs: 5_000,
          minReplicas: 2,
        },
      });
      c.stores[0]!.writeMode = 'deposed';
      const err = (await gw.write(header(100), chunked(bytes(100, 3))).catch((e) => e)) as ConnectError;
      expect(err.code).toBe(Code.Unavailable);
      // The store named term 99; the view stays at 5, so it asks for another directory.
      for (let i = 0; i < 500 && asked.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
      expect(asked).toEqual([{ nextSource: false }, { nextSource: true }]);
    } finally {
      view.stop();
    }
  });

  it('pushes small blobs into the cache on write, not large ones', async () => {
    const { gw, cache } = setup({ cacheMax: 1000 });
    await gw.write(header(1000, { blobId: 'small' }), chunked(bytes(1000, 1)));
    await gw.write(header(1001, { blobId: 'large' }), chunked(bytes(1001, 1)));
    expect(await cache.get('small')).toBeDefined();
    expect(await cache.get('large')).toBeUndefined();
  });
});

describe('BlobGateway reads', () => {
  it('serves the second read of a blob from the cache', async () => {
    const { gw, stores, cache } = setup();
    const data = bytes(5000, 5);
    // Written by "another gateway": straight into the stores and directory.
    const other = new BlobGateway({
      directory: (gw as unknown as { o: { directory: never } }).o.directory,
      store: (t) => stores.find((s) => s.storeId === t.address)!.api(),
      cache: new MemoryBlobCache({ ttlMs: 1, maxBlobSize: 0, maxBytes: 0 }),
      log,
      maxUploadSize: 1e7,
      storeTimeoutMs: 200,
    });
    await other.write(header(5000, { blobId: 'rt' }), chunked(data));
    const a = await readAll(gw, 'rt');
    expect(a.fromCache).toBe(false);
    const b = await readAll(gw, 'rt');
    expect(b.fromCache).toBe(true);
    expect(b.data.equals(data)).toBe(true);
    expect((await cache.stats()).local).toEqual({ hits: 1, misses: 1 });
  });

  it('a read under way when the blob is deleted does not fill the cache (its lease is revoked)', async () => {
    const { gw, cache } = setup();
    const data = bytes(5000, 4);
    await fresh(gw).write(header(5000, { blobId: 'ld' }), chunked(data)); // not in gw's cache
    const o = await gw.open('ld'); // misses, takes the lease
    expect(o.fromCache).toBe(false);
    const it = o.chunks[Symbol.asyncIterator]();
    await it.next(); // the read has begun
    expect(await gw.delete('ld')).toBe(true);
    for (let m = await it.next(); !m.done; m = await it.next()) {} // the slow reader finishes after it
    expect(await cache.get('ld')).toBeUndefined();
  });

  it('a read that will not fill (a range) gives its lease back: the next whole read fills', async () => {
    const { gw } = setup();
    await fresh(gw).write(header(3000, { blobId: 'lr' }), chunked(bytes(3000, 3))); // not in gw's cache
    expect((await readAll(gw, 'lr', 100, 10)).fromCache).toBe(false);
    expect((await readAll(gw, 'lr')).fromCache).toBe(false);
    expect((await readAll(gw, 'lr')).fromCache).toBe(true);
  });

  it('fails over to the next replica when a store is down or stalls, without the client noticing', async () => {
    const { gw, stores, failovers } = setup({ cacheMax: 0 });
    const data = bytes(20_000, 6);
    await gw.write(header(data.length, { blobId: 'f' }), chunked(data));
    stores[0]!.mode = { kind: 'down' };
    expect((await readAll(gw, 'f')).data.equals(data)).toBe(true);
    stores[0]!.mode = { kind: 'stall' };
    stores[1]!.mode = { kind: 'down' };
    const t0 = Date.now();
    expect((await readAll(gw, 'f')).data.equals(data)).toBe(true);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(failovers.length).toBe(3);
  });

  it('still tries the recorded replicas when the directory offers none (just after an election)', async () => {
    const { gw, directory, stores } = setup({ cacheMax: 0 });
    const data = bytes(5000, 9);
    await gw.write(header(data.length, { blobId: 'e' }), chunked(data));
    directory.hideReplicas = true;
    stores[0]!.mode = { kind: 'down' };
    expect((await readAll(gw, 'e')).data.equals(data)).toBe(true);
    // A fresh gateway learns the store addresses from GetClusterStatus.
    const fresh = new BlobGateway({
      directory,
      store: (t) => stores.find((s) => s.storeId === t.address)!.api(),
      cache: new MemoryBlobCache({ ttlMs: 1, maxBlobSize: 0, maxBytes: 0 }),
      log,
      maxUploadSize: 1e7,
      storeTimeoutMs: 200,
    });
    expect((await readAll(fresh, 'e')).data.equals(data)).toBe(true);
  });

  it('resumes mid-stream on another replica from the first byte not yet delivered', async () => {
    const { gw, stores } = setup({ cacheMax: 0 });
    const data = bytes(20_000, 7);
    await gw.write(header(data.length, { blobId: 'm' }), chunked(data));
    stores[0]!.mode = { kind: 'cut', after: 7000 };
    stores[1]!.mode = { kind: 'cut', after: 5000 };
    const got = await readAll(gw, 'm');
    expect(got.data.length).toBe(20_000);
    expect(got.data.equals(data)).toBe(true);
  });

  it('answers UNAVAILABLE naming the failures when no replica can be read, NOT_FOUND for unknown ids', async () => {
    const { gw, stores } = setup({ cacheMax: 0 });
    await gw.write(header(10, { blobId: 'u' }), chunked(bytes(10, 1)));
    for (const s of stores) s.mode = { kind: 'down' };
    const err = (await gw.open('u').catch((e) => e)) as ConnectError;
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toContain('3 tried');
    const nf = (await gw.open('nope').catch((e) => e)) as ConnectError;
    expect(nf.code).toBe(Code.NotFound);
  });

  it('reads byte ranges, from the stores and from the cache', async () => {
    const { gw } = setup();
    const data = bytes(3000, 8);
    await gw.write(header(3000, { blobId: 'r' }), chunked(data));
    const fromCache = await readAll(gw, 'r', 1000, 500);
    expect(fromCache.fromCache).toBe(true);
    expect(fromCache.data.equals(data.subarray(1000, 1500))).toBe(true);
    const { gw: g2 } = setup({ cacheMax: 0 });
    await g2.write(header(3000, { blobId: 'r' }), chunked(data));
    const fromStore = await readAll(g2, 'r', 2500, 0);
    expect(fromStore.data.equals(data.subarray(2500))).toBe(true);
    const oob = (await g2.open('r', 3001).catch((e) => e)) as ConnectError;
    expect(oob.code).toBe(Code.OutOfRange);
  });

  it('invalidates the cache on delete; later reads are NOT_FOUND', async () => {
    const { gw } = setup();
    await gw.write(header(10, { blobId: 'd' }), chunked(bytes(10, 1)));
    expect((await readAll(gw, 'd')).fromCache).toBe(true);
    expect(await gw.delete('d')).toBe(true);
    expect(((await gw.open('d').catch((e) => e)) as ConnectError).code).toBe(Code.NotFound);
    expect(await gw.delete('d')).toBe(false);
  });

  it('locates with the highest commit index seen by any gateway (read-your-writes)', async () => {
    const { gw, directory, cache } = setup({ cacheMax: 0 });
    await gw.write(header(10, { blobId: 'w' }), chunked(bytes(10, 1)));
    await gw.stat('w');
    expect(directory.minIndexes.at(-1)).toBe(directory.index);
    cache.sharedCommitIndex = () => 1000n; // another gateway committed later
    await gw.stat('w');
    expect(directory.minIndexes.at(-1)).toBe(1000n);
  });

  it('lists in id order with pages', async () => {
    const { gw } = setup();
    for (const id of ['c', 'a', 'b']) await gw.write(header(1, { blobId: id }), chunked(bytes(1, 1)));
    const p1 = await gw.list(2, '', '');
    expect(p1.blobs.map((b) => b.blobId)).toEqual(['a', 'b']);
    const p2 = await gw.list(2, p1.next, '');
    expect(p2.blobs.map((b) => b.blobId)).toEqual(['c']);
    expect(p2.next).toBe('');
  });
});

describe('ranges', () => {
  it('clamps a store read range to the blob', () => {
    expect(range(10, 10, 0)).toEqual({ offset: 10, length: 0 });
    expect(range(10, 4, 100)).toEqual({ offset: 4, length: 6 });
  });
});

describe('cookie proofs of public reads (issue 13)', () => {
  const whole = (info: { size: bigint }) => ({ offset: 0, length: Number(info.size) });
  const drain = async (o: { chunks: AsyncIterable<Uint8Array> }) => {
    const parts: Uint8Array[] = [];
    for await (const c of o.chunks) parts.push(c);
    return Buffer.concat(parts);
  };
  const refusal = async (p: Promise<unknown>, id: string) => {
    const e = ConnectError.from(await p.then(() => new Error('served')).catch((x: unknown) => x));
    return `${Code[e.code]} ${e.rawMessage.replace(id, '<id>')}`;
  };

  it('a capability cookie goes to every store read; a wrong cookie answers exactly as an unknown id', async () => {
    // No cache (max size 0): every read reaches the stores.
    const { gw, stores, directory } = setup({ cacheMax: 0 });
    const data = bytes(3000, 41);
    await gw.write(header(data.length, { blobId: 'cap-1' }), chunked(data));
    const cookie = directory.blobs.get('cap-1')!.cookie;
    const read = await gw.openWith('cap-1', whole, undefined, { kind: 'cookie', cookie });
    expect((await drain(read)).equals(data)).toBe(true);
    const asked = stores.flatMap((s) => s.readCookies);
    expect(asked.length).toBeGreaterThan(0);
    expect(asked.every((c) => c === cookie)).toBe(true);

    const wrong = await refusal(
      gw.openWith('cap-1', whole, undefined, { kind: 'cookie', cookie: cookie + 1n }),
      'cap-1',
    );
    const unknown = await refusal(
      gw.openWith('cap-none', whole, undefined, { kind: 'cookie', cookie }),
      'cap-none',
    );
    expect(wrong).toBe('NotFound blob <id> not found');
    expect(unknown).toBe(wrong);
  });

  it('a signed URL check runs on the cookie before any store read, then the stores check it too', async () => {
    const { gw, stores, directory } = setup({ cacheMax: 0 });
    const data = bytes(2000, 42);
    await gw.write(header(data.length, { blobId: 'sig-1' }), chunked(data));
    const cookie = directory.blobs.get('sig-1')!.cookie;
    const reads = () => stores.reduce((n, s) => n + s.reads, 0);
    const before = reads();
    const refused = await refusal(
      gw.openWith('sig-1', whole, undefined, { kind: 'check', ok: () => false }),
      'sig-1',
    );
    expect(refused).toBe('NotFound blob <id> not found');
    expect(reads()).toBe(before); // no byte was asked for
    const ok = await gw.openWith('sig-1', whole, undefined, { kind: 'check', ok: (c) => c === cookie });
    expect((await drain(ok)).equals(data)).toBe(true);
    expect(stores.flatMap((s) => s.readCookies).at(-1)).toBe(cookie);
  });

  it('a cached blob is held to the same proof (the cache entry carries the cookie)', async () => {
    const { gw, directory } = setup();
    const data = bytes(500, 43);
    await gw.write(header(data.length, { blobId: 'cached-1' }), chunked(data));
    const cookie = directory.blobs.get('cached-1')!.cookie;
    expect((await gw.openWith('cached-1', whole, undefined, { kind: 'cookie', cookie })).fromCache).toBe(
      true,
    );
    expect(
      await refusal(
        gw.openWith('cached-1', whole, undefined, { kind: 'cookie', cookie: cookie ^ 1n }),
        'cached-1',
      ),
    ).toBe('NotFound blob <id> not found');
  });
});
