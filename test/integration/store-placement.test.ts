import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Code, ConnectError } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { placementGroupOf } from '../../internal/common/placement.js';
import { encodeIndexHeader, encodeIndexRecords } from '../../internal/store/index-file.js';
import { encodeSuperblock, SUPERBLOCK_SIZE } from '../../internal/store/superblock.js';
import { securityOf, TEST_ADMIN } from '../helpers/pki.js';
import {
  bytes,
  readBlob,
  type StoreClient,
  sameBytes,
  storeClient,
  writeBlob,
} from '../helpers/store-client.js';
import { type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';
import { encodeV1Needle } from '../unit/store/v1-needle.js';

/**
 * The store side of placement groups over real gRPC, real store processes:
 * needle facts (Stat, ReadHeader.needle), group listings, digests, the
 * idempotency and re-upload rules of Write with forwarding, stamped Delete and
 * Replicate keep_stamp, v1 volumes, and the bounds on every number.
 */
const sha = (b: Uint8Array) => new Uint8Array(createHash('sha256').update(b).digest());
const failure = async (p: Promise<unknown>) => {
  try {
    await p;
  } catch (err) {
    const ce = ConnectError.from(err);
    return { code: ce.code, message: ce.rawMessage };
  }
  return { code: 'ok' as const, message: '' };
};

function startStore(name: string, dataDir = tmpName(name)): Promise<ServerProcess> {
  return spawnServer({
    name,
    args: ['store', '--listen', '127.0.0.1:0', '--data', dataDir],
    env: { STORE_ID: name, MAX_VOLUME_SIZE: '64MiB' },
  });
}

const procs: ServerProcess[] = [];
/** Each store as a placement-mode gateway calls it (Write, Read, Stat, Delete with the leader's term). */
const clients: StoreClient[] = [];
/** Each store as the replication manager calls it (Replicate, stamped Delete, digests; its lease term). */
const managers: StoreClient[] = [];
/** The directory leader's fencing term a gateway sends; the manager's lease term. */
const TERM = 1n;
const MANAGER_TERM = 1n;
const target = (i: number) => ({ storeId: procs[i]!.name, address: procs[i]!.address });

beforeAll(async () => {
  for (const name of ['pg-1', 'pg-2', 'pg-3']) {
    const p = await startStore(name);
    procs.push(p);
    clients.push(storeClient(p.address));
    managers.push(
      storeClient(p.address, { security: await securityOf({ role: 'replication', id: 'pg-manager' }) }),
    );
  }
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
});

async function listGroup(
  c: StoreClient,
  req: { groupCount: number; group: number; pageSize: number; includeDeleted?: boolean; prefix?: string },
) {
  const ids: string[] = [];
  let pageToken = '';
  for (let pages = 0; pages < 1000; pages++) {
    const page = await c.listPlacementGroup({ ...req, pageToken });
    expect(page.needles.length).toBeLessThanOrEqual(req.pageSize);
    ids.push(...page.needles.map((n) => n.blobId));
    if (page.nextPageToken === '') return { ids, pages: pages + 1 };
    pageToken = page.nextPageToken;
  }
  throw new Error('listing did not end');
}

describe('needle facts', () => {
  it('Write stores content type and file name; Stat and the Read header report the facts', async () => {
    const [a] = clients as [StoreClient];
    const data = bytes(120_000, 1);
    const w = await writeBlob(a, 'facts-1', data, {
      cookie: 31n,
      contentType: 'image/webp',
      fileName: 'Straße.webp',
    });
    expect(w.cookie).toBe(31n);
    const st = await a.stat({ blobId: 'facts-1' });
    expect(st.needle).toMatchObject({
      blobId: 'facts-1',
      cookie: 31n,
      size: 120_000n,
      contentType: 'image/webp',
      fileName: 'Straße.webp',
      writtenAtMs: w.writtenAtMs,
      deleted: false,
      crc32c: w.crc32c,
    });
    expect(Buffer.from(st.needle!.sha256).equals(Buffer.from(sha(data)))).toBe(true);
    let header: unknown;
    for await (const m of a.read({ blobId: 'facts-1', cookie: 31n, offset: 0n, length: 10n })) {
      if (m.msg.case === 'header') header = m.msg.value.needle;
    }
    expect(header).toEqual(st.needle);
    expect((await failure(a.stat({ blobId: 'facts-1', cookie: 32n }))).code).toBe(Code.NotFound);
    expect((await a.delete({ blobId: 'facts-1', term: TERM })).found).toBe(true);
    expect((await failure(a.stat({ blobId: 'facts-1' }))).code).toBe(Code.NotFound);
    const t = await a.stat({ blobId: 'facts-1', includeDeleted: true });
    expect(t.needle).toMatchObject({ deleted: true, size: 0n, cookie: 31n });
  });
});

describe('Write with forwarding', () => {
  it('a retry that hits the first store idempotently still gives a missing replica the same cookie and stamp', async () => {
    const [a, b, c] = clients as [StoreClient, StoreClient, StoreClient];
    const data = bytes(300_000, 2);
    const first = await writeBlob(a, 'fwd-1', data, {
      cookie: 5n,
      forwardTo: [target(1)],
      term: TERM,
      fileName: 'x.bin',
    });
    // The retry draws another cookie and now also names pg-3, which never got the blob.
    const retry = await writeBlob(a, 'fwd-1', data, {
      cookie: 6n,
      forwardTo: [target(1), target(2)],
      term: TERM,
      fileName: 'x.bin',
    });
    expect(retry.cookie).toBe(5n);
    expect(retry.writtenAtMs).toBe(first.writtenAtMs);
    expect(retry.replicas.map((r) => r.storeId).sort()).toEqual(['pg-1', 'pg-2', 'pg-3']);
    for (const cl of [a, b, c]) {
      const st = await cl.stat({ blobId: 'fwd-1' });
      expect(st.needle?.cookie).toBe(5n);
      expect(st.needle?.writtenAtMs).toBe(first.writtenAtMs);
      expect(st.needle?.fileName).toBe('x.bin');
      expect(sameBytes(await readBlob(cl, 'fwd-1', { cookie: 5n }), data)).toBe('identical');
    }
  });

  it('a forwarded write supersedes an older needle on a replica (an unacknowledged earlier attempt)', async () => {
    const [a, , c] = clients as [StoreClient, StoreClient, StoreClient];
    // pg-3 holds an earlier attempt under another cookie, stamped 10 s ago.
    await writeBlob(c, 'fwd-old', bytes(800, 12), { cookie: 1n, writtenAtMs: BigInt(Date.now() - 10_000) });
    const w = await writeBlob(a, 'fwd-old', bytes(900, 13), {
      cookie: 2n,
      forwardTo: [target(2)],
      term: TERM,
    });
    for (const cl of [a, c]) {
      expect((await cl.stat({ blobId: 'fwd-old' })).needle).toMatchObject({
        cookie: 2n,
        writtenAtMs: w.writtenAtMs,
        size: 900n,
      });
      expect(sameBytes(await readBlob(cl, 'fwd-old'), bytes(900, 13))).toBe('identical');
    }
  });

  it('other content under a held id is ALREADY_EXISTS and reaches no replica', async () => {
    const [a, , c] = clients as [StoreClient, StoreClient, StoreClient];
    await writeBlob(a, 'fwd-2', bytes(1000, 3));
    const f = await failure(writeBlob(a, 'fwd-2', bytes(1000, 4), { forwardTo: [target(2)], term: TERM }));
    expect(f.code).toBe(Code.AlreadyExists);
    expect(f.message).toMatch(/already exists here with different content/);
    expect((await failure(c.stat({ blobId: 'fwd-2' }))).code).toBe(Code.NotFound);
  });

  it('a re-upload after delete is stored again everywhere with one newer stamp', async () => {
    const [a, b] = clients as [StoreClient, StoreClient];
    const [ma, mb] = managers as [StoreClient, StoreClient];
    const w1 = await writeBlob(a, 'fwd-3', bytes(500, 5), { forwardTo: [target(1)], term: TERM });
    for (const cl of [ma, mb])
      expect(
        (await cl.delete({ blobId: 'fwd-3', term: MANAGER_TERM, writtenAtMs: w1.writtenAtMs + 1n })).found,
      ).toBe(true);
    const w2 = await writeBlob(a, 'fwd-3', bytes(700, 6), {
      cookie: 77n,
      forwardTo: [target(1)],
      term: TERM,
    });
    expect(w2.writtenAtMs).toBeGreaterThan(w1.writtenAtMs + 1n);
    for (const cl of [a, b]) {
      expect((await cl.stat({ blobId: 'fwd-3' })).needle).toMatchObject({
        cookie: 77n,
        writtenAtMs: w2.writtenAtMs,
        size: 700n,
      });
    }
  });
});

describe('stamped Delete and Replicate keep_stamp', () => {
  it('Delete with written_at_ms copies a tombstone and keeps a newer needle', async () => {
    const [a] = clients as [StoreClient];
    const [ma] = managers as [StoreClient];
    const w = await writeBlob(a, 'sd-1', bytes(100, 7));
    expect(
      (await ma.delete({ blobId: 'sd-1', term: MANAGER_TERM, writtenAtMs: w.writtenAtMs - 1n })).found,
    ).toBe(false);
    expect(sameBytes(await readBlob(a, 'sd-1'), bytes(100, 7))).toBe('identical');
    expect(
      (await ma.delete({ blobId: 'sd-1', term: MANAGER_TERM, writtenAtMs: w.writtenAtMs + 10n })).found,
    ).toBe(true);
    expect((await a.stat({ blobId: 'sd-1', includeDeleted: true })).needle?.writtenAtMs).toBe(
      w.writtenAtMs + 10n,
    );
    // A tombstone for an id this store never held (backfill).
    expect((await ma.delete({ blobId: 'sd-never', term: MANAGER_TERM, writtenAtMs: 1_000n })).found).toBe(
      false,
    );
    expect((await a.stat({ blobId: 'sd-never', includeDeleted: true })).needle?.writtenAtMs).toBe(1_000n);
  });

  it('Replicate keep_stamp copies stamp, cookie and facts verbatim, and keeps a newer-or-equal needle', async () => {
    const [a, b] = clients as [StoreClient, StoreClient];
    const [ma, mb] = managers as [StoreClient, StoreClient];
    const data = bytes(40_000, 8);
    const w = await writeBlob(a, 'rk-1', data, { cookie: 12n, contentType: 'text/plain', fileName: 'r.txt' });
    const r1 = await mb.replicate({
      term: MANAGER_TERM,
      blobId: 'rk-1',
      source: target(0),
      keepStamp: true,
      sha256: sha(data),
    });
    expect(r1.replica?.storeId).toBe('pg-2');
    const sa = (await a.stat({ blobId: 'rk-1' })).needle;
    const sb = (await b.stat({ blobId: 'rk-1' })).needle;
    expect({ ...sb, volumeId: 0 }).toEqual({ ...sa, volumeId: 0 });
    expect(sb?.writtenAtMs).toBe(w.writtenAtMs);
    // Equal stamp here: kept, succeeds.
    expect(
      (await mb.replicate({ term: MANAGER_TERM, blobId: 'rk-1', source: target(0), keepStamp: true })).size,
    ).toBe(40_000n);
    // A newer tombstone here: kept, stays deleted.
    expect(
      (await mb.delete({ blobId: 'rk-1', term: MANAGER_TERM, writtenAtMs: w.writtenAtMs + 5n })).found,
    ).toBe(true);
    await mb.replicate({ term: MANAGER_TERM, blobId: 'rk-1', source: target(0), keepStamp: true });
    expect((await failure(b.stat({ blobId: 'rk-1' }))).code).toBe(Code.NotFound);
    // The source's newer needle (a re-upload there) replaces an older tombstone here.
    await ma.delete({ blobId: 'rk-1', term: MANAGER_TERM, writtenAtMs: w.writtenAtMs + 5n });
    const re = await writeBlob(a, 'rk-1', bytes(10, 9), { cookie: 13n });
    await mb.replicate({ term: MANAGER_TERM, blobId: 'rk-1', source: target(0), keepStamp: true });
    expect((await b.stat({ blobId: 'rk-1' })).needle).toMatchObject({
      cookie: 13n,
      writtenAtMs: re.writtenAtMs,
      size: 10n,
    });
    // A wrong expected SHA-256 is DATA_LOSS, nothing copied.
    await writeBlob(a, 'rk-2', bytes(10, 10));
    const bad = await failure(
      mb.replicate({
        term: MANAGER_TERM,
        blobId: 'rk-2',
        source: target(0),
        keepStamp: true,
        sha256: sha(bytes(10, 11)),
      }),
    );
    expect(bad.code).toBe(Code.DataLoss);
    expect((await failure(b.stat({ blobId: 'rk-2' }))).code).toBe(Code.NotFound);
  });
});

describe('placement groups over the wire', () => {
  const G = 8;
  const ids = Array.from({ length: 150 }, (_, i) => `pl-${i % 2 ? 'odd' : 'even'}-${i}`);

  it('lists a group page by page (prefix, tombstones) and compares digests between two stores', async () => {
    const [, b, c] = clients as [StoreClient, StoreClient, StoreClient];
    const [, mb, mc] = managers as [StoreClient, StoreClient, StoreClient];
    for (const [i, id] of ids.entries()) {
      await writeBlob(b, id, bytes(30 + i, 100 + i), { forwardTo: [target(2)], term: TERM });
    }
    for (const id of ids.slice(0, 15)) {
      const st = await b.stat({ blobId: id });
      const stamp = st.needle!.writtenAtMs + 1n;
      for (const cl of [mb, mc])
        expect((await cl.delete({ blobId: id, term: MANAGER_TERM, writtenAtMs: stamp })).found).toBe(true);
    }
    const g = placementGroupOf(ids[20]!, G);
    const inGroup = ids.filter((id) => placementGroupOf(id, G) === g);
    const live = inGroup.filter((id) => !ids.slice(0, 15).includes(id));
    const listed = await listGroup(b, { groupCount: G, group: g, pageSize: 4 });
    expect(listed.ids.filter((id) => id.startsWith('pl-')).sort()).toEqual([...live].sort());
    expect(listed.pages).toBeGreaterThan(2);
    const withTombs = await listGroup(b, { groupCount: G, group: g, pageSize: 1000, includeDeleted: true });
    expect(withTombs.ids.filter((id) => id.startsWith('pl-')).sort()).toEqual([...inGroup].sort());
    const odd = await listGroup(b, { groupCount: G, group: g, pageSize: 3, prefix: 'pl-odd-' });
    expect(odd.ids.sort()).toEqual(live.filter((id) => id.startsWith('pl-odd-')).sort());
    // Same newest needles on both stores → same digests; one more write → that group differs.
    const db = (await mb.getPlacementDigests({ groupCount: G })).digests;
    const dc = (await mc.getPlacementDigests({ groupCount: G })).digests;
    const only = (ds: typeof db) => ds.filter((d) => d.needles > 0n);
    // pg-2 and pg-3 also hold blobs of other tests: compare the groups after copying those too.
    const mine = (await listGroup(b, { groupCount: 1, group: 0, pageSize: 1000, includeDeleted: true })).ids;
    const theirs = (await listGroup(c, { groupCount: 1, group: 0, pageSize: 1000, includeDeleted: true }))
      .ids;
    expect(mine.length).toBeGreaterThan(0);
    const groupsOfOthers = new Set(
      [...mine, ...theirs].filter((id) => !id.startsWith('pl-')).map((id) => placementGroupOf(id, G)),
    );
    const cmp = (ds: typeof db) => only(ds).filter((d) => !groupsOfOthers.has(d.group));
    expect(cmp(db).length).toBeGreaterThan(0);
    expect(cmp(db)).toEqual(cmp(dc));
    const extra = ids
      .map((_, i) => `pl-extra-${i}`)
      .find((id) => !groupsOfOthers.has(placementGroupOf(id, G)))!;
    await writeBlob(c, extra, bytes(5, 1));
    const dc2 = (await mc.getPlacementDigests({ groupCount: G })).digests;
    const ge = placementGroupOf(extra, G);
    expect(cmp(dc2).find((d) => d.group === ge)?.digest).not.toBe(
      cmp(db).find((d) => d.group === ge)?.digest,
    );
    expect(cmp(dc2).filter((d) => d.group !== ge)).toEqual(cmp(db).filter((d) => d.group !== ge));
  });

  it('answers bad numbers with INVALID_ARGUMENT and a precise message', async () => {
    const [a] = clients as [StoreClient];
    const [ma] = managers as [StoreClient];
    const cases: [() => Promise<unknown>, RegExp][] = [
      [() => a.listPlacementGroup({ groupCount: 0, group: 0 }), /group_count.*1\.\.65536/],
      [() => a.listPlacementGroup({ groupCount: 70_000, group: 0 }), /70000/],
      [() => a.listPlacementGroup({ groupCount: 4, group: 4 }), /group 4 must be below group_count 4/],
      [
        () => a.listPlacementGroup({ groupCount: 4, group: 0, pageSize: 1001 }),
        /page_size 1001 exceeds the maximum 1000/,
      ],
      [() => a.listPlacementGroup({ groupCount: 4, group: 0, pageToken: 'garbage!' }), /page_token/],
      [() => a.listPlacementGroup({ groupCount: 4, group: 0, prefix: 'a/b' }), /prefix/],
      [() => ma.getPlacementDigests({ groupCount: 0 }), /group_count/],
      [() => ma.delete({ blobId: 'x', term: MANAGER_TERM, writtenAtMs: -5n }), /written_at_ms -5/],
      [
        () => ma.delete({ blobId: 'x', term: MANAGER_TERM, writtenAtMs: BigInt(Date.now() + 86_400_000) }),
        /ahead of this store's clock/,
      ],
      [() => writeBlob(a, 'x', bytes(1, 1), { writtenAtMs: BigInt(Date.now() + 86_400_000) }), /ahead/],
      [() => writeBlob(a, 'x', bytes(1, 1), { contentType: 'a'.repeat(256) }), /content_type is 256 bytes/],
      [
        () => writeBlob(a, 'x', bytes(1, 1), { fileName: 'bad\nname' }),
        /file_name contains a control character/,
      ],
      [() => a.stat({ blobId: '' }), /empty/],
    ];
    for (const [call, re] of cases) {
      const f = await failure(call());
      expect(f.code, String(re)).toBe(Code.InvalidArgument);
      expect(f.message).toMatch(re);
    }
  });
});

describe('a store started on a format v1 data directory', () => {
  const dir = tmpName('pg-v1');
  let proc: ServerProcess | undefined;
  afterAll(async () => {
    await proc?.stop();
  });

  it('serves the v1 needles (facts without SHA-256) and writes v2 beside them', async () => {
    await fs.mkdir(dir, { recursive: true });
    const data = bytes(90_000, 21);
    const needle = encodeV1Needle(
      { key: 'legacy', cookie: 4n, deleted: false, writtenAtMs: 1_700_000_000_000 },
      data,
    );
    await fs.writeFile(
      path.join(dir, '1.dat'),
      Buffer.concat([encodeSuperblock({ volumeId: 1, generation: 0, createdAtMs: 1 }), needle]),
    );
    await fs.writeFile(
      path.join(dir, '1.idx'),
      Buffer.concat([
        encodeIndexHeader({ volumeId: 1, generation: 0, createdAtMs: 1 }),
        encodeIndexRecords([
          {
            key: 'legacy',
            flags: 0,
            offset: SUPERBLOCK_SIZE,
            dataSize: data.length,
            cookie: 4n,
            writtenAtMs: 1_700_000_000_000,
          },
        ]),
      ]),
    );
    proc = await startStore('pg-v1', dir);
    const cl = storeClient(proc.address);
    expect(sameBytes(await readBlob(cl, 'legacy', { cookie: 4n }), data)).toBe('identical');
    const st = await cl.stat({ blobId: 'legacy' });
    expect(st.needle).toMatchObject({
      cookie: 4n,
      size: 90_000n,
      writtenAtMs: 1_700_000_000_000n,
      contentType: '',
    });
    expect(st.needle?.sha256.length).toBe(0);
    // An identical retry is recognised (SHA-256 computed from the v1 data) and keeps the v1 cookie.
    expect((await writeBlob(cl, 'legacy', data, { cookie: 99n })).cookie).toBe(4n);
    await writeBlob(cl, 'modern', bytes(10, 22), { contentType: 'a/b' });
    expect((await cl.stat({ blobId: 'modern' })).needle?.sha256.length).toBe(32);
    const admin = storeClient(proc.address, { security: await securityOf(TEST_ADMIN) });
    expect((await admin.scrub({})).corrupt).toEqual([]);
  });
});
