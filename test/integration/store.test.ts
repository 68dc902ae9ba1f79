import { createHash } from 'node:crypto';
import { Code, ConnectError } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fencedTerm } from '../../internal/rpc/errors.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { securityOf, TEST_ADMIN } from '../helpers/pki.js';
import {
  bytes,
  readBlob,
  type StoreClient,
  sameBytes,
  storeClient,
  writeBlob,
} from '../helpers/store-client.js';
import { grpcurl, type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest();
const codeOf = async (p: Promise<unknown>) => {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err).code;
  }
  return 'ok';
};
const messageOf = async (p: Promise<unknown>) => {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err).rawMessage;
  }
  return '';
};

async function startStore(
  name: string,
  dataDir = tmpName(name),
  env: Record<string, string> = {},
): Promise<ServerProcess> {
  return spawnServer({
    name,
    args: ['store', '--listen', '127.0.0.1:0', '--data', dataDir],
    env: { STORE_ID: name, ...env },
  });
}

/** Over mTLS each call is made by the role allowed to make it (internal/security/authz.ts). */
const asAdmin = (address: string) => storeClient(address, { security: admin });
const asManager = (address: string) => storeClient(address, { security: manager });
let admin: TransportSecurity;
let manager: TransportSecurity;
beforeAll(async () => {
  admin = await securityOf(TEST_ADMIN);
  manager = await securityOf({ role: 'replication', id: 'test-manager' });
});

describe('one store over real gRPC', () => {
  let proc: ServerProcess;
  let client: StoreClient;

  beforeAll(async () => {
    proc = await startStore('store-a', tmpName('store-a'), { MAX_VOLUME_SIZE: '8MiB' });
    client = storeClient(proc.address);
  });
  afterAll(async () => {
    await proc?.stop();
  });

  it('writes, reads, range-reads and deletes', async () => {
    const data = bytes(300_000, 1);
    const res = await writeBlob(client, 'photo-1.jpg', data, { cookie: 42n, chunkSize: 10_000 });
    expect(res.blobId).toBe('photo-1.jpg');
    expect(Buffer.from(res.sha256)).toEqual(sha(data));
    expect(res.replicas).toHaveLength(1);
    expect(res.replicas[0]?.storeId).toBe('store-a');

    expect(sameBytes(await readBlob(client, 'photo-1.jpg'), data)).toBe('identical');
    expect(sameBytes(await readBlob(client, 'photo-1.jpg', { cookie: 42n }), data)).toBe('identical');
    expect(
      sameBytes(
        await readBlob(client, 'photo-1.jpg', { offset: 1000, length: 5000 }),
        data.subarray(1000, 6000),
      ),
    ).toBe('identical');
    expect(
      sameBytes(await readBlob(client, 'photo-1.jpg', { offset: 299_990 }), data.subarray(299_990)),
    ).toBe('identical');
    expect(await codeOf(readBlob(client, 'photo-1.jpg', { cookie: 43n }))).toBe(Code.NotFound);
    expect(await codeOf(readBlob(client, 'photo-1.jpg', { offset: 300_001 }))).toBe(Code.OutOfRange);

    expect((await client.delete({ blobId: 'photo-1.jpg', term: 1n })).found).toBe(true);
    expect(await codeOf(readBlob(client, 'photo-1.jpg'))).toBe(Code.NotFound);
    expect((await client.delete({ blobId: 'photo-1.jpg', term: 1n })).found).toBe(false);
  });

  it('writes an empty blob', async () => {
    await writeBlob(client, 'empty', new Uint8Array());
    expect(sameBytes(await readBlob(client, 'empty'), Buffer.alloc(0))).toBe('identical');
  });

  it('is idempotent for the same content (keeping the original cookie and stamp) and refuses different content', async () => {
    const data = bytes(5000, 2);
    const a = await writeBlob(client, 'same', data, { cookie: 7n });
    expect(a.cookie).toBe(7n);
    expect(a.writtenAtMs).toBeGreaterThan(0n);
    const b = await writeBlob(client, 'same', data, { cookie: 7n });
    expect(b.replicas[0]).toEqual(a.replicas[0]);
    // A retried upload that drew another cookie keeps the first one.
    const c = await writeBlob(client, 'same', data, { cookie: 8n });
    expect(c.cookie).toBe(7n);
    expect(c.writtenAtMs).toBe(a.writtenAtMs);
    expect(await codeOf(writeBlob(client, 'same', bytes(5000, 3), { cookie: 7n }))).toBe(Code.AlreadyExists);
    expect(await messageOf(writeBlob(client, 'same', bytes(5000, 3)))).toMatch(
      /already exists here with different content/,
    );
    expect(sameBytes(await readBlob(client, 'same'), data)).toBe('identical');
  });

  it('commits nothing for a short stream or a checksum mismatch', async () => {
    const data = bytes(100_000, 4);
    const short = await messageOf(writeBlob(client, 'short', data, { truncateAt: 50_000 }));
    expect(short).toMatch(/50000 of the declared 100000 bytes/);
    expect(await codeOf(readBlob(client, 'short'))).toBe(Code.NotFound);

    const wrong = await codeOf(writeBlob(client, 'badsum', data, { sha256: sha(bytes(10, 5)) }));
    expect(wrong).toBe(Code.InvalidArgument);
    expect(await codeOf(readBlob(client, 'badsum'))).toBe(Code.NotFound);
    // The id is still free: a correct write afterwards succeeds.
    await writeBlob(client, 'badsum', data, { sha256: sha(data) });
    expect(sameBytes(await readBlob(client, 'badsum'), data)).toBe('identical');
  });

  it('answers bad input with precise statuses and keeps serving', async () => {
    expect(await codeOf(readBlob(client, 'never-written'))).toBe(Code.NotFound);
    expect(await codeOf(readBlob(client, ''))).toBe(Code.InvalidArgument);
    expect(await codeOf(readBlob(client, 'x'.repeat(256)))).toBe(Code.InvalidArgument);
    expect(await messageOf(readBlob(client, 'bad/id'))).toContain('"/"');
    expect(await codeOf(writeBlob(client, 'white space', bytes(10, 6)))).toBe(Code.InvalidArgument);
    expect(await codeOf(client.delete({ blobId: '', term: 1n }))).toBe(Code.InvalidArgument);
    const headerless = client.write(
      (async function* () {
        yield { msg: { case: 'chunk' as const, value: new Uint8Array(3) } };
      })(),
    );
    expect(await codeOf(headerless)).toBe(Code.InvalidArgument);
    expect(await codeOf(writeBlob(client, 'too-long', bytes(10, 6), { size: 5 }))).toBe(Code.InvalidArgument);
    await writeBlob(client, 'still-serving', bytes(10, 7));
    expect(sameBytes(await readBlob(client, 'still-serving'), bytes(10, 7))).toBe('identical');
  });

  it('rolls over to new volumes at MAX_VOLUME_SIZE and reports stats from the filesystem', async () => {
    for (let i = 0; i < 12; i++) await writeBlob(client, `big-${i}`, bytes(1024 * 1024, 100 + i));
    const stats = await client.getStats({});
    expect(stats.storeId).toBe('store-a');
    expect(stats.volumes.length).toBeGreaterThanOrEqual(2);
    expect(stats.volumes.some((v) => v.readOnly)).toBe(true);
    expect(stats.capacityBytes).toBeGreaterThan(stats.freeBytes);
    expect(stats.freeBytes).toBeGreaterThan(0n);
    for (const v of stats.volumes) expect(v.sizeBytes).toBeLessThanOrEqual(8n * 1024n * 1024n);
    for (let i = 0; i < 12; i++)
      expect(sameBytes(await readBlob(client, `big-${i}`), bytes(1024 * 1024, 100 + i))).toBe('identical');
  });

  it('compacts on demand while keeping every live blob', async () => {
    for (let i = 0; i < 6; i++) await client.delete({ blobId: `big-${i}`, term: 1n });
    const res = await asAdmin(proc.address).compact({ force: true });
    expect(res.compactions.length).toBeGreaterThan(0);
    for (let i = 0; i < 6; i++) expect(await codeOf(readBlob(client, `big-${i}`))).toBe(Code.NotFound);
    for (let i = 6; i < 12; i++)
      expect(sameBytes(await readBlob(client, `big-${i}`), bytes(1024 * 1024, 100 + i))).toBe('identical');
  });

  it('scrubs clean volumes without findings and lists needles in id order', async () => {
    const scrub = await asAdmin(proc.address).scrub({});
    expect(scrub.needlesChecked).toBeGreaterThan(0n);
    expect(scrub.corrupt).toEqual([]);
    const page = await asAdmin(proc.address).listNeedles({ pageSize: 3 });
    expect(page.needles).toHaveLength(3);
    const ids = page.needles.map((n) => n.blobId);
    expect([...ids].sort()).toEqual(ids);
    const next = await asAdmin(proc.address).listNeedles({ pageSize: 1000, pageToken: page.nextPageToken });
    expect((next.needles[0]?.blobId ?? '') > ids[2]!).toBe(true);
  });

  it('fences directory and replication-manager terms separately', async () => {
    await writeBlob(client, 'fenced', bytes(100, 11), { term: 7n });
    // A deposed directory leader (older term) may not delete.
    expect(await codeOf(client.delete({ blobId: 'fenced', term: 6n }))).toBe(Code.FailedPrecondition);
    expect(await messageOf(client.delete({ blobId: 'fenced', term: 6n }))).toMatch(
      /directory term 6 is older than term 7/,
    );
    // The refusal names the newer term (a gateway whose view lags retries on it).
    const refusal = await client.delete({ blobId: 'fenced', term: 6n }).catch((e: unknown) => e);
    expect(fencedTerm(refusal)).toBe(7n);
    // A manager's term comes from another counter: term 1 is not "older" than directory term 7.
    const copy = await codeOf(
      asManager(proc.address).replicate({
        blobId: 'fenced',
        term: 1n,
        source: { storeId: 'store-a', address: proc.address },
      }),
    );
    expect(copy).not.toBe(Code.FailedPrecondition);
    expect((await client.delete({ blobId: 'fenced', term: 7n })).found).toBe(true);
  });

  it('is usable from the real grpcurl', async () => {
    const res = await grpcurl([proc.address, 'haystack.v1.StoreService/GetStats']);
    expect(res.code).toBe(0);
    expect(JSON.parse(res.stdout).storeId).toBe('store-a');
  });
});

describe('fencing terms across kill -9', () => {
  /** The refusal's code, message and the newer term it names (FENCED_TERM_HEADER). */
  const refusal = async (p: Promise<unknown>) => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    const ce = err === undefined ? undefined : ConnectError.from(err);
    return { code: ce?.code, message: ce?.rawMessage, newer: fencedTerm(err) };
  };

  it('a restarted store still refuses Write, Delete and Replicate of older terms', {
    timeout: 120_000,
  }, async () => {
    const dir = tmpName('store-fenced');
    let proc = await startStore('store-f', dir);
    try {
      await writeBlob(storeClient(proc.address), 'kept', bytes(100, 12), { term: 9n });
      // The manager's term is checked (and persisted) before the copy itself is tried.
      await codeOf(
        asManager(proc.address).replicate({
          blobId: 'kept',
          term: 4n,
          source: { storeId: 'store-f', address: proc.address },
        }),
      );
      await proc.kill();
      proc = await startStore('store-f', dir);
      const client = storeClient(proc.address);
      // A deposed directory leader (or a gateway with an old placement view) is fenced out.
      expect(await refusal(client.delete({ blobId: 'kept', term: 8n }))).toEqual({
        code: Code.FailedPrecondition,
        message: 'directory term 8 is older than term 9 already seen: the sender was deposed',
        newer: 9n,
      });
      expect(await refusal(writeBlob(client, 'late', bytes(100, 13), { term: 8n }))).toMatchObject({
        code: Code.FailedPrecondition,
        newer: 9n,
      });
      // And a deposed replication manager.
      expect(
        await refusal(
          asManager(proc.address).replicate({
            blobId: 'kept',
            term: 3n,
            source: { storeId: 'store-f', address: proc.address },
          }),
        ),
      ).toMatchObject({ code: Code.FailedPrecondition, newer: 4n });
      // Nothing was done: the blob is there, the refused write is not; the current term works.
      expect(await codeOf(readBlob(client, 'late'))).toBe(Code.NotFound);
      expect((await client.delete({ blobId: 'kept', term: 9n })).found).toBe(true);
    } finally {
      await proc.stop();
    }
  });
});

describe('three stores with fan-out replication', () => {
  const procs: ServerProcess[] = [];

  beforeAll(async () => {
    for (const name of ['fan-1', 'fan-2', 'fan-3']) procs.push(await startStore(name));
  });
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()));
  });

  const targets = () => procs.map((p) => ({ storeId: p.name, address: p.address }));

  it('acknowledges only when every replica holds the bytes', async () => {
    const data = bytes(1_500_000, 9);
    const [a, b, c] = procs.map((p) => storeClient(p.address)) as [StoreClient, StoreClient, StoreClient];
    const res = await writeBlob(a, 'fanned', data, { forwardTo: targets().slice(1), cookie: 5n, term: 1n });
    expect(res.replicas.map((r) => r.storeId).sort()).toEqual(['fan-1', 'fan-2', 'fan-3']);
    for (const cl of [a, b, c])
      expect(sameBytes(await readBlob(cl, 'fanned', { cookie: 5n }), data)).toBe('identical');
  });

  it('fails naming the store when one replica is down, and acknowledges nothing', async () => {
    const a = storeClient(procs[0]!.address);
    await procs[2]!.kill();
    const msg = await messageOf(
      writeBlob(a, 'partial', bytes(200_000, 10), { forwardTo: targets().slice(1), term: 1n }),
    );
    expect(msg).toContain('fan-3');
    const code = await codeOf(
      writeBlob(a, 'partial', bytes(200_000, 10), { forwardTo: targets().slice(1), term: 1n }),
    );
    expect(code).toBe(Code.Unavailable);
  });
});

describe('a new needle over a tombstone', () => {
  const dstDir = tmpName('copy-dst');
  let src: ServerProcess;
  let dst: ServerProcess;

  beforeAll(async () => {
    src = await startStore('copy-src');
    dst = await startStore('copy-dst', dstDir);
  });
  afterAll(async () => {
    await Promise.all([src?.stop(), dst?.stop()]);
  });

  it('is taken from a client Write (re-upload after delete) and from Replicate, and survives a restart', async () => {
    const data = bytes(50_000, 12);
    const a = storeClient(src.address);
    await writeBlob(a, 'again', data, {
      forwardTo: [{ storeId: 'copy-dst', address: dst.address }],
      term: 1n,
      cookie: 9n,
    });
    // Deleted, then uploaded again by a client: stored again, stamped above the tombstone.
    const d = storeClient(dst.address);
    expect(await codeOf(d.stat({ blobId: 'reup' }))).toBe(Code.NotFound);
    await writeBlob(d, 'reup', bytes(10, 1), { cookie: 1n });
    expect((await d.delete({ blobId: 'reup', term: 1n })).found).toBe(true);
    const tomb = await d.stat({ blobId: 'reup', includeDeleted: true });
    expect(tomb.needle?.deleted).toBe(true);
    const re = await writeBlob(d, 'reup', bytes(20, 2), { cookie: 2n });
    expect(re.cookie).toBe(2n);
    expect(re.writtenAtMs).toBeGreaterThan(tomb.needle!.writtenAtMs);
    expect(sameBytes(await readBlob(d, 'reup'), bytes(20, 2))).toBe('identical');
    // The replication manager removed the replica on dst (a tombstone there); it copies it back.
    expect((await storeClient(dst.address).delete({ blobId: 'again', term: 1n })).found).toBe(true);
    const copy = await asManager(dst.address).replicate({
      term: 1n,
      blobId: 'again',
      cookie: 9n,
      sha256: sha(data),
      source: { storeId: 'copy-src', address: src.address },
    });
    expect(copy.replica?.storeId).toBe('copy-dst');
    expect(sameBytes(await readBlob(storeClient(dst.address), 'again', { cookie: 9n }), data)).toBe(
      'identical',
    );
    await dst.stop();
    dst = await startStore('copy-dst', dstDir);
    const b = storeClient(dst.address);
    expect(sameBytes(await readBlob(b, 'again', { cookie: 9n }), data)).toBe('identical');
    // Deleted again: stays deleted across a restart and a compaction.
    expect((await b.delete({ blobId: 'again', term: 1n })).found).toBe(true);
    await asAdmin(dst.address).compact({ force: true });
    await dst.stop();
    dst = await startStore('copy-dst', dstDir);
    expect(await codeOf(readBlob(storeClient(dst.address), 'again'))).toBe(Code.NotFound);
  });
});
