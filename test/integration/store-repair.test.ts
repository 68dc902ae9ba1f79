import fs from 'node:fs/promises';
import path from 'node:path';
import { Code, ConnectError } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { flipBytesOnDisk } from '../faults/harness.js';
import { securityOf } from '../helpers/pki.js';
import {
  bytes,
  readBlob,
  type StoreClient,
  sameBytes,
  storeClient,
  writeBlob,
} from '../helpers/store-client.js';
import { type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

/**
 * Repair of a damaged replica over real gRPC, real store processes: Replicate
 * keep_stamp meeting a needle with the SAME stamp verifies it, replaces it 1 ms
 * above when its data is damaged (durably: a restart serves the good copy), and
 * leaves an intact one alone (nothing appended).
 */
const names = ['rp-1', 'rp-2'] as const;
const dirs = names.map((n) => tmpName(n));
const procs: ServerProcess[] = [];
const clients: StoreClient[] = [];
const target = (i: number) => ({ storeId: names[i]!, address: procs[i]!.address });
/** The directory leader's term a gateway's forwarded write carries; the manager's lease term. */
const TERM = 1n;
const MANAGER_TERM = 1n;
let managerSecurity: TransportSecurity;
/** Store i as the replication manager calls it (Replicate). */
const asManager = (i: number) => storeClient(procs[i]!.address, { security: managerSecurity });

function startStore(i: number): Promise<ServerProcess> {
  return spawnServer({
    name: names[i]!,
    args: ['store', '--listen', '127.0.0.1:0', '--data', dirs[i]!],
    env: { STORE_ID: names[i]!, MAX_VOLUME_SIZE: '64MiB' },
  });
}

async function restart(i: number): Promise<void> {
  await procs[i]!.stop();
  procs[i] = await startStore(i);
  clients[i] = storeClient(procs[i]!.address);
}

/** Total bytes of a store's volume files. */
async function datBytes(dir: string): Promise<number> {
  let n = 0;
  for (const f of await fs.readdir(dir)) if (f.endsWith('.dat')) n += (await fs.stat(path.join(dir, f))).size;
  return n;
}

async function failureCode(p: Promise<unknown>): Promise<Code | 'ok'> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return ConnectError.from(err).code;
  }
}

beforeAll(async () => {
  managerSecurity = await securityOf({ role: 'replication', id: 'rp-manager' });
  for (let i = 0; i < names.length; i++) {
    procs.push(await startStore(i));
    clients.push(storeClient(procs[i]!.address));
  }
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await Promise.all(dirs.map((d) => fs.rm(d, { recursive: true, force: true })));
});

describe('Replicate keep_stamp over an equal-stamp needle', () => {
  it('replaces a damaged copy (1 ms above), which survives a restart and converges the source', async () => {
    const id = 'repair-equal-stamp-blob-1';
    const data = bytes(600_000, 31);
    // Forwarded: both stores hold the needle with the same stamp and cookie.
    const w = await writeBlob(clients[0]!, id, data, { cookie: 21n, forwardTo: [target(1)], term: TERM });
    const before = (await clients[1]!.stat({ blobId: id })).needle;
    expect(before?.writtenAtMs).toBe(w.writtenAtMs);

    await flipBytesOnDisk(dirs[1]!, id);
    expect(await failureCode(readBlob(clients[1]!, id))).toBe(Code.DataLoss);

    await asManager(1).replicate({ term: MANAGER_TERM, blobId: id, source: target(0), keepStamp: true });
    expect(sameBytes(await readBlob(clients[1]!, id, { cookie: 21n }), data)).toBe('identical');
    const repaired = (await clients[1]!.stat({ blobId: id })).needle;
    expect(repaired).toMatchObject({ cookie: 21n, size: 600_000n, writtenAtMs: w.writtenAtMs + 1n });
    expect(repaired?.sha256).toEqual(before?.sha256);

    await restart(1);
    expect(sameBytes(await readBlob(clients[1]!, id, { cookie: 21n }), data)).toBe('identical');
    expect((await clients[1]!.stat({ blobId: id })).needle?.writtenAtMs).toBe(w.writtenAtMs + 1n);

    // Anti-entropy's direction: the source takes the newer (repaired) needle, same bytes and cookie.
    await asManager(0).replicate({ term: MANAGER_TERM, blobId: id, source: target(1), keepStamp: true });
    expect((await clients[0]!.stat({ blobId: id })).needle).toMatchObject({
      cookie: 21n,
      writtenAtMs: w.writtenAtMs + 1n,
    });
    expect(sameBytes(await readBlob(clients[0]!, id, { cookie: 21n }), data)).toBe('identical');
  });

  it('replaces a copy whose needle header is damaged (flipped bytes in its content type)', async () => {
    const id = 'repair-equal-stamp-header-1';
    const data = bytes(50_000, 33);
    const meta = { contentType: 'application/octet-stream', fileName: 'photo-original.bin' };
    const w = await writeBlob(clients[0]!, id, data, {
      cookie: 23n,
      forwardTo: [target(1)],
      term: TERM,
      ...meta,
    });
    await flipBytesOnDisk(dirs[1]!, id); // lands in the header's content type
    expect(await failureCode(clients[1]!.stat({ blobId: id }))).toBe(Code.DataLoss);

    await asManager(1).replicate({ term: MANAGER_TERM, blobId: id, source: target(0), keepStamp: true });
    expect(sameBytes(await readBlob(clients[1]!, id, { cookie: 23n }), data)).toBe('identical');
    await restart(1);
    expect(sameBytes(await readBlob(clients[1]!, id, { cookie: 23n }), data)).toBe('identical');
    expect((await clients[1]!.stat({ blobId: id })).needle).toMatchObject({
      ...meta,
      cookie: 23n,
      writtenAtMs: w.writtenAtMs + 1n,
    });
  });

  it('keeps an intact equal-stamp copy without writing anything', async () => {
    const id = 'intact-equal-stamp-blob-1';
    const data = bytes(300_000, 32);
    const w = await writeBlob(clients[0]!, id, data, { cookie: 22n, forwardTo: [target(1)], term: TERM });
    const size = await datBytes(dirs[1]!);
    const r = await asManager(1).replicate({
      term: MANAGER_TERM,
      blobId: id,
      source: target(0),
      keepStamp: true,
    });
    expect(r.size).toBe(300_000n);
    expect(await datBytes(dirs[1]!)).toBe(size);
    expect((await clients[1]!.stat({ blobId: id })).needle?.writtenAtMs).toBe(w.writtenAtMs);
    expect(sameBytes(await readBlob(clients[1]!, id), data)).toBe('identical');
  });
});
