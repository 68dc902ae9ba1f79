import path from 'node:path';
import { Code, ConnectError } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shardKey } from '../../internal/common/shard-key.js';
import { type EncodedBlob, encodeBlob } from '../../internal/ec/codec.js';
import { TooFewShardsError } from '../../internal/ec/errors.js';
import { getShard, putShard, putStripe, readStripe } from '../../internal/ec/shard-client.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { flipBytesOnDisk } from '../faults/harness.js';
import { securityOf } from '../helpers/pki.js';
import { bytes, type StoreClient, sameBytes, storeClient } from '../helpers/store-client.js';
import { type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

/**
 * Erasure-coded shards on real store processes over real gRPC (docs/design/ec-tier.md):
 * a stripe RS(4,2) spread over six stores reads back byte-identical with no decoding
 * while its data shards answer, and after kill -9 of any m = 2 of its stores by
 * decoding; shards survive kill -9 and restart; a flipped byte in a shard on disk is
 * DATA_LOSS from its store and the stripe still reads from the others; the wire
 * rules of WriteShard hold; shards stay out of the store's blob listings.
 */
const N = 6;
const names = Array.from({ length: N }, (_, i) => `ec-${i}`);
const dirs = names.map((n) => tmpName(n));
const procs: Array<ServerProcess | undefined> = [];
const clients: Array<StoreClient | undefined> = [];
const code = { k: 4, m: 2 };
/** Shards are the replication manager's: its role, and its lease term on every write. */
const TERM = 1n;
let manager: TransportSecurity;

function startStore(i: number): Promise<ServerProcess> {
  return spawnServer({
    name: names[i] as string,
    args: ['store', '--listen', '127.0.0.1:0', '--data', dirs[i] as string],
    env: { STORE_ID: names[i] as string, MAX_VOLUME_SIZE: '64MiB' },
  });
}
async function start(i: number): Promise<void> {
  const p = await startStore(i);
  procs[i] = p;
  clients[i] = storeClient(p.address, { security: manager });
}
async function kill9(i: number): Promise<void> {
  await procs[i]?.kill();
  procs[i] = undefined;
}
/** The stores of a stripe whose shard i is on store (i + rotate) mod N, as clients (some dead). */
const placed = (rotate: number) => Array.from({ length: N }, (_, i) => clients[(i + rotate) % N]);
const client = (i: number) => clients[i] as StoreClient;

const blobs = [
  { id: 'cold-a', data: bytes(1024 * 1024 + 13, 1), rotate: 0 },
  { id: 'cold-b', data: bytes(64 * 1024, 2), rotate: 2 },
  { id: 'cold-c', data: bytes(5, 3), rotate: 4 },
];
const encoded = new Map<string, EncodedBlob>();

async function codeOf(err: unknown): Promise<Code | undefined> {
  return err === undefined ? undefined : ConnectError.from(err).code;
}

beforeAll(async () => {
  manager = await securityOf({ role: 'replication', id: 'ec-manager' });
  await Promise.all(names.map((_, i) => start(i)));
  for (const b of blobs) {
    const enc = await encodeBlob(b.data, code);
    encoded.set(b.id, enc);
    await putStripe(b.id, enc, placed(b.rotate) as StoreClient[], { term: TERM });
  }
}, 120_000);

afterAll(async () => {
  await Promise.all(procs.map((p) => p?.kill()));
});

describe('erasure-coded shards on real stores', () => {
  it('reads every stripe byte-identical from its data shards alone (no decoding)', async () => {
    for (const b of blobs) {
      const r = await readStripe(b.id, (encoded.get(b.id) as EncodedBlob).layout, placed(b.rotate));
      expect(sameBytes(r.data, b.data), b.id).toBe('identical');
      expect(r.decoded, b.id).toBe(false);
      expect(r.failed.size).toBe(0);
    }
  });

  it('keeps shards out of the store blob listings and digests', async () => {
    const listed = await client(0).listNeedles({ pageSize: 100 });
    expect(listed.needles).toEqual([]);
    const digests = await client(0).getPlacementDigests({ groupCount: 16 });
    expect(digests.digests).toEqual([]);
  });

  it('answers WriteShard retries idempotently and refuses bad shards precisely', async () => {
    const enc = encoded.get('cold-a') as EncodedBlob;
    const shard0 = enc.shards[0] as Buffer;
    const crc0 = enc.layout.crc32c[0] as number;
    // A retry of a durable shard writes nothing.
    const again = await putShard(client(0), 'cold-a', 0, shard0, crc0, { term: TERM });
    expect(again.written).toBe(false);
    // Other bytes under the same key: ALREADY_EXISTS, unless replacing (repair).
    const other = Buffer.from(shard0);
    other[0] = (other[0] as number) ^ 1;
    const { crc32c } = await import('../../internal/store/crc32c.js');
    const err = await putShard(client(0), 'cold-a', 0, other, crc32c(other), { term: TERM }).catch(
      (e: unknown) => e,
    );
    expect(await codeOf(err)).toBe(Code.AlreadyExists);
    // Bytes that do not match the header's CRC32C: INVALID_ARGUMENT, nothing stored.
    const bad = await putShard(client(0), 'fresh', 0, shard0, crc0 ^ 1, { term: TERM }).catch(
      (e: unknown) => e,
    );
    expect(await codeOf(bad)).toBe(Code.InvalidArgument);
    expect((bad as Error).message).toMatch(/CRC32C/);
    const none = await getShard(client(0), 'fresh', 0).catch((e: unknown) => e);
    expect(await codeOf(none)).toBe(Code.NotFound);
    // Bounds on what the wire names.
    const badId = await putShard(client(0), 'a/b', 0, shard0, crc0, { term: TERM }).catch((e: unknown) => e);
    expect(await codeOf(badId)).toBe(Code.InvalidArgument);
    const badIndex = await putShard(client(0), 'cold-a', 30, shard0, crc0, { term: TERM }).catch(
      (e: unknown) => e,
    );
    expect(await codeOf(badIndex)).toBe(Code.InvalidArgument);
    expect((badIndex as Error).message).toMatch(/outside 0..29/);
    const past = await getShard(client(0), 'cold-a', 0, { offset: shard0.length + 1 }).catch(
      (e: unknown) => e,
    );
    expect(await codeOf(past)).toBe(Code.OutOfRange);
    // A range of a shard.
    const part = await getShard(client(0), 'cold-a', 0, { offset: 100, length: 50 });
    expect(part.equals(shard0.subarray(100, 150))).toBe(true);
  });

  it('reads every stripe byte-identical after kill -9 of m stores, decoding where data shards died', {
    timeout: 120_000,
  }, async () => {
    await Promise.all([kill9(0), kill9(1)]);
    // cold-a lost data shards 0 and 1; cold-b (rotated by 2) lost parity shards 4 and 5;
    // cold-c (rotated by 4) lost data shards 2 and 3.
    const expectDecoded: Record<string, boolean> = { 'cold-a': true, 'cold-b': false, 'cold-c': true };
    for (const b of blobs) {
      const stores = placed(b.rotate);
      const r = await readStripe(b.id, (encoded.get(b.id) as EncodedBlob).layout, stores);
      expect(sameBytes(r.data, b.data), b.id).toBe('identical');
      expect(r.decoded, b.id).toBe(expectDecoded[b.id]);
    }
    // One more loss is beyond RS(4,2): TooFewShardsError (the gateway's UNAVAILABLE).
    await kill9(2);
    const err = await readStripe('cold-a', (encoded.get('cold-a') as EncodedBlob).layout, placed(0)).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TooFewShardsError);
    expect((err as Error).message).toMatch(/only 3 of the 4 shards needed are intact/);
  });

  it('keeps acknowledged shards across kill -9 and restart', { timeout: 120_000 }, async () => {
    await Promise.all([start(0), start(1), start(2)]);
    for (const b of blobs) {
      const r = await readStripe(b.id, (encoded.get(b.id) as EncodedBlob).layout, placed(b.rotate));
      expect(sameBytes(r.data, b.data), b.id).toBe('identical');
      expect(r.decoded, b.id).toBe(false);
    }
  });

  it('detects a flipped byte in a shard on disk and reads the stripe from the others', async () => {
    const enc = encoded.get('cold-a') as EncodedBlob;
    await flipBytesOnDisk(path.join(dirs[1] as string, 'ec'), shardKey('cold-a', 1));
    const direct = await getShard(client(1), 'cold-a', 1).catch((e: unknown) => e);
    expect(await codeOf(direct)).toBe(Code.DataLoss);
    const r = await readStripe('cold-a', enc.layout, placed(0));
    expect(sameBytes(r.data, blobs[0]?.data as Buffer)).toBe('identical');
    expect(r.decoded).toBe(true);
    expect([...r.failed.keys()]).toEqual([1]);
    // Repair: the rebuilt shard replaces the corrupt one, and reads are systematic again.
    const { rebuildShard } = await import('../../internal/ec/codec.js');
    const shards = await Promise.all(
      placed(0).map((c, i) => (i === 1 ? undefined : getShard(c as StoreClient, 'cold-a', i))),
    );
    const rebuilt = await rebuildShard(enc.layout, shards, 1);
    const put = await putShard(client(1), 'cold-a', 1, rebuilt, enc.layout.crc32c[1] as number, {
      replace: true,
      term: TERM,
    });
    expect(put.written).toBe(true);
    const again = await readStripe('cold-a', enc.layout, placed(0));
    expect(sameBytes(again.data, blobs[0]?.data as Buffer)).toBe('identical');
    expect(again.decoded).toBe(false);
  });
});
