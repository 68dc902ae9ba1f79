import { createClient, createRouterTransport } from '@connectrpc/connect';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { StoreService } from '../../../gen/haystack/v1/store_pb.js';
import { coolBlob } from '../../../internal/ec/cooling.js';
import type { StoreClient } from '../../../internal/ec/shard-client.js';
import { ClientPool } from '../../../internal/rpc/clients.js';
import { FencingTerms } from '../../../internal/store/fencing-terms.js';
import { StoreServiceImpl } from '../../../internal/store/service.js';
import { ShardStore } from '../../../internal/store/shard-store.js';
import { blob, openStore, put, sha256, tempDir } from './helpers.js';

/**
 * Access heat counts client reads only (docs/design/ec-tier.md): a store's Read
 * reports heat to the replication manager, and the manager's own reads — the
 * read before encoding a blob, a copy's source read — must not, or a blob's move
 * keeps it warm (the cooling clock starts again after each encode attempt) and
 * can even bring it back (two such reads within a report interval reached the
 * ec-cooling test's warm line).
 */
const log = pino({ level: 'silent' });
const STAMP = Date.now() - 60_000;

async function node(name: string, heat: string[]): Promise<StoreClient> {
  const dir = await tempDir();
  const store = await openStore(dir);
  const shards = await ShardStore.open({ dataDir: dir, maxVolumeSize: 1 << 20, compactionThreshold: 0.6 });
  const impl = new StoreServiceImpl({
    storeId: name,
    store,
    peers: new ClientPool(),
    log,
    readChunkSize: 64 * 1024,
    shards,
    fencing: await FencingTerms.open(dir),
    onRead: (blobId) => heat.push(`${name}:${blobId}`),
  });
  const data = blob(10_000, 7);
  await put(store, 'photo', data, { sha: sha256(data), stamp: STAMP, keepStamp: true });
  return createClient(
    StoreService,
    createRouterTransport((r) => impl.register(r)),
  );
}

async function readAll(c: StoreClient, req: { blobId: string; internal?: boolean }): Promise<number> {
  let n = 0;
  for await (const m of c.read(req)) if (m.msg.case === 'chunk') n += m.msg.value.length;
  return n;
}

describe('access heat from store reads', () => {
  it('a client read counts; a read marked internal does not', async () => {
    const heat: string[] = [];
    const c = await node('s0', heat);
    expect(await readAll(c, { blobId: 'photo' })).toBe(10_000);
    expect(heat).toEqual(['s0:photo']);
    expect(await readAll(c, { blobId: 'photo', internal: true })).toBe(10_000);
    expect(heat).toEqual(['s0:photo']);
  });

  it('encoding a blob reads it without making it warm', async () => {
    const heat: string[] = [];
    const stores = [await node('s0', heat), await node('s1', heat), await node('s2', heat)];
    const cooled = await coolBlob('photo', { k: 2, m: 1 }, { members: stores, ecStores: stores });
    expect(cooled.stripeId).toBe('photo');
    expect(heat).toEqual([]);
  });
});
