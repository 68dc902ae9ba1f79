import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WriteRequestSchema } from '../../gen/haystack/v1/store_pb.js';
import { coolBlob, warmBlob } from '../../internal/ec/cooling.js';
import { layoutFromWire } from '../../internal/ec/layout-wire.js';
import { getShard, readStripe } from '../../internal/ec/shard-client.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
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
 * A blob's trip to the cold tier and back on six real store processes
 * (docs/design/ec-tier.md): replicated on three group members → RS(4,2) shards on
 * six stores + a stub on each member (Stat answers the blob's facts with where
 * its bytes are; Read refuses with the stripe's name; Replicate copies the stub
 * verbatim) → kill -9 of two stores (two shards, two members) and the blob still
 * reads byte-identical from its stripe → back to full replicas, shards deleted.
 */
const N = 6;
const names = Array.from({ length: N }, (_, i) => `tier-${i}`);
const dirs = names.map((n) => tmpName(n));
const procs: Array<ServerProcess | undefined> = [];
/** Stores as the replication manager calls them (cooling, shards, Replicate), with its lease term. */
const clients: StoreClient[] = [];
/** Stores as a gateway calls them (uploads with forward_to carry the directory leader's term). */
const gateways: StoreClient[] = [];
const TERM = 1n;
let manager: TransportSecurity;
const code = { k: 4, m: 2 };
const members = () => clients.slice(0, 3);
const blobId = 'photo-cold-1';
const data = bytes(300_000 + 7, 42);

async function start(i: number): Promise<void> {
  const p = await spawnServer({
    name: names[i] as string,
    args: ['store', '--listen', '127.0.0.1:0', '--data', dirs[i] as string],
    env: { STORE_ID: names[i] as string, MAX_VOLUME_SIZE: '64MiB' },
  });
  procs[i] = p;
  clients[i] = storeClient(p.address, { security: manager });
  gateways[i] = storeClient(p.address);
}
const codeOf = (err: unknown) => ConnectError.from(err).code;

beforeAll(async () => {
  manager = await securityOf({ role: 'replication', id: 'tier-manager' });
  await Promise.all(names.map((_, i) => start(i)));
  await writeBlob(gateways[0] as StoreClient, blobId, data, {
    contentType: 'image/jpeg',
    fileName: 'cat.jpg',
    forwardTo: [1, 2].map((i) => ({ storeId: names[i] as string, address: procs[i]?.address as string })),
    term: TERM,
  });
}, 120_000);

afterAll(async () => {
  await Promise.all(procs.map((p) => p?.kill()));
});

describe('cold tier: cool, read, warm', () => {
  it('cools a blob: shards on six stores, a stub on every member, reads refused with the stripe named', {
    timeout: 60_000,
  }, async () => {
    const before = await (clients[0] as StoreClient).stat({ blobId });
    const cooled = await coolBlob(blobId, code, { members: members(), ecStores: clients, term: TERM });
    expect(cooled.stampMs).toBe((before.needle?.writtenAtMs ?? 0n) + 1n);
    for (const m of members()) {
      const f = (await m.stat({ blobId })).needle;
      expect(f?.size).toBe(BigInt(data.length));
      expect(Buffer.from(f?.sha256 ?? []).equals(Buffer.from(before.needle?.sha256 ?? []))).toBe(true);
      expect(f?.contentType).toBe('image/jpeg');
      expect(f?.fileName).toBe('cat.jpg');
      expect(f?.cold?.stripeId).toBe(blobId);
      expect(f?.writtenAtMs).toBe(cooled.stampMs);
      const err = await readBlob(m, blobId).catch((e: unknown) => e);
      expect(codeOf(err)).toBe(Code.FailedPrecondition);
      expect((err as Error).message).toMatch(/erasure-coded \(stripe photo-cold-1\)/);
    }
  });

  it('copies a stub verbatim with Replicate keep_stamp (backfill, anti-entropy)', async () => {
    await (clients[3] as StoreClient).replicate({
      blobId,
      source: { storeId: names[0] as string, address: procs[0]?.address as string },
      keepStamp: true,
      term: TERM,
    });
    const f = (await (clients[3] as StoreClient).stat({ blobId })).needle;
    expect(f?.cold?.stripeId).toBe(blobId);
    expect(f?.size).toBe(BigInt(data.length));
  });

  it('refuses a cold stub Write from anyone but the replication manager', async () => {
    async function* stubFromGateway() {
      yield create(WriteRequestSchema, {
        msg: {
          case: 'header',
          value: {
            blobId,
            size: 0n,
            cold: { stripeId: blobId },
            writtenAtMs: BigInt(Date.now()),
            term: TERM,
          },
        },
      });
    }
    const err = await (gateways[0] as StoreClient).write(stubFromGateway()).catch((e: unknown) => e);
    expect(codeOf(err)).toBe(Code.PermissionDenied);
    expect((await (gateways[0] as StoreClient).stat({ blobId })).needle?.cold?.stripeId).toBe(blobId);
  });

  it('refuses the stub content type on an ordinary Write', async () => {
    const err = await writeBlob(gateways[4] as StoreClient, 'forged', Buffer.from('x'), {
      contentType: 'application/vnd.haystack.cold-stub+proto',
    }).catch((e: unknown) => e);
    expect(codeOf(err)).toBe(Code.InvalidArgument);
    expect((err as Error).message).toMatch(/reserved for cold stubs/);
  });

  it('reads the cold blob byte-identical after kill -9 of two stores holding shards and stubs', {
    timeout: 60_000,
  }, async () => {
    await Promise.all([procs[0]?.kill(), procs[1]?.kill()]);
    procs[0] = undefined;
    procs[1] = undefined;
    const f = (await (clients[2] as StoreClient).stat({ blobId })).needle;
    const layout = layoutFromWire(f?.cold?.layout);
    if (typeof layout === 'string') throw new Error(layout);
    const r = await readStripe(blobId, layout, clients);
    expect(sameBytes(r.data.subarray(0, data.length), data)).toBe('identical');
    expect(r.decoded).toBe(true);
  });

  it('a shard store lost during cooling leaves the blob replicated: no member gets a stub', {
    timeout: 60_000,
  }, async () => {
    const id = 'photo-cold-2';
    const body = bytes(70_000, 7);
    await writeBlob(gateways[2] as StoreClient, id, body, {
      term: TERM,
      forwardTo: [3, 4].map((i) => ({ storeId: names[i] as string, address: procs[i]?.address as string })),
    });
    const group = [2, 3, 4].map((i) => clients[i] as StoreClient);
    // clients[0] and [1] are dead (killed above): shards 0 and 1 cannot be written.
    const err = await coolBlob(id, code, { members: group, ecStores: clients, term: TERM }).catch(
      (e: unknown) => e,
    );
    expect((err as Error).message).toMatch(/shard 0 of stripe photo-cold-2/);
    for (const m of group) {
      expect(sameBytes(await readBlob(m, id), body)).toBe('identical');
      expect((await m.stat({ blobId: id })).needle?.cold).toBeUndefined();
    }
  });

  it('a member lost during the stub writes leaves every member readable, stub or full needle', {
    timeout: 60_000,
  }, async () => {
    const id = 'photo-cold-3';
    const body = bytes(90_000, 9);
    await writeBlob(gateways[2] as StoreClient, id, body, {
      term: TERM,
      forwardTo: [3].map((i) => ({ storeId: names[i] as string, address: procs[i]?.address as string })),
    });
    // Shards go to live stores only (2..5 and again 2, 3 for the parity: distinct keys per index).
    const ec = [2, 3, 4, 5, 2, 3].map((i) => clients[i] as StoreClient);
    // The group's third member (store 0) is dead: its stub write fails after the shards are durable.
    const group = [2, 3, 0].map((i) => clients[i] as StoreClient);
    const err = await coolBlob(id, code, { members: group, ecStores: ec, term: TERM }).catch(
      (e: unknown) => e,
    );
    expect((err as Error).message).toMatch(/group member 2/);
    // Each live member holds the stub (its write settled) or, had it failed, the full
    // needle: either way the blob reads byte-identical; anti-entropy converges them.
    let stubs = 0;
    for (const m of group.slice(0, 2)) {
      const f = (await m.stat({ blobId: id })).needle;
      if (f?.cold) {
        stubs++;
        const layout = layoutFromWire(f.cold.layout);
        if (typeof layout === 'string') throw new Error(layout);
        const r = await readStripe(id, layout, ec);
        expect(sameBytes(r.data.subarray(0, body.length), body)).toBe('identical');
      } else {
        expect(sameBytes(await readBlob(m, id), body)).toBe('identical');
      }
    }
    expect(stubs).toBe(2);
  });

  it('warms it back: full needles on every member, then the shards are gone', {
    timeout: 60_000,
  }, async () => {
    await Promise.all([start(0), start(1)]);
    const w = await warmBlob(blobId, { members: members(), ecStores: clients, term: TERM });
    expect(w.decoded).toBe(false);
    for (const m of members()) {
      expect(sameBytes(await readBlob(m, blobId), data)).toBe('identical');
      const f = (await m.stat({ blobId })).needle;
      expect(f?.cold).toBeUndefined();
      expect(f?.contentType).toBe('image/jpeg');
    }
    for (let i = 0; i < N; i++) {
      const err = await getShard(clients[i] as StoreClient, blobId, i).catch((e: unknown) => e);
      expect(codeOf(err), `shard ${i}`).toBe(Code.NotFound);
    }
  });
});
