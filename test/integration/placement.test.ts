import { createHash } from 'node:crypto';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { placementGroupOf } from '../../internal/common/placement.js';
import { DirectoryClient } from '../../internal/directory/client.js';
import { HaystackClient, NotFoundError } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { bytes, readBlob, storeClient, writeBlob } from '../helpers/store-client.js';

/**
 * Placement groups end to end (docs/design/metadata-at-scale.md): real directories,
 * stores and gateways; the directory holds no per-blob record and is not called
 * per write or read.
 */

const GROUPS = 16;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** BlobService on the first gateway, as an operator over mTLS (BlobInfo with its cookie). */
const blobs = () => createClient(BlobService, cluster.transport(cluster.gateways[0]!.address, 'gateway'));

let cluster: Cluster;
let client: HaystackClient;

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The kinds of the committed log entries in (from, to]. */
async function entryKindsSince(from: bigint, to: bigint): Promise<string[]> {
  if (to <= from) return [];
  const dir = new DirectoryClient({ addresses: cluster.directoryAddrs.split(',') });
  const kinds: string[] = [];
  const ctl = new AbortController();
  try {
    for await (const msg of dir.watchMetadata(
      { fromIndex: from + 1n, watcherId: 'placement-test' },
      ctl.signal,
    )) {
      if (msg.msg.case !== 'entries') continue;
      for (const e of msg.msg.value.entries) {
        if (e.index > to) return kinds;
        kinds.push(e.change.case ?? 'none');
        if (e.index === to) return kinds;
      }
    }
  } finally {
    ctl.abort();
  }
  return kinds;
}

beforeAll(async () => {
  cluster = await Cluster.start({
    stores: 4,
    gateways: 2,
    // A loaded machine must not flap stores DOWN (each flap demotes a member).
    env: { STORE_DEGRADED_AFTER: '2s', STORE_DOWN_AFTER: '4s' },
    directoryEnv: { PLACEMENT_GROUPS: String(GROUPS), PLACEMENT_REPLACE_AFTER: '4s' },
  });
  client = new HaystackClient({ url: cluster.url });
  await waitFor('placement groups', async () => {
    const s = await cluster.status();
    return s.placementGroupCount === GROUPS && s.placementGroups.length === GROUPS ? true : undefined;
  });
});
afterAll(async () => {
  await cluster?.stop();
});

describe('placement groups', () => {
  it('creates every group with 3 distinct members', async () => {
    const s = await cluster.status();
    for (const g of s.placementGroups) {
      expect(new Set(g.members.map((m) => m.storeId)).size).toBe(3);
      // Created ACTIVE; under CPU starvation a store may miss heartbeats long enough to be replaced.
      expect(g.members.some((m) => m.state === PlacementMemberState.ACTIVE)).toBe(true);
    }
  });

  it('writes, reads, stats, lists and deletes with no per-blob directory entry', async () => {
    const before = await cluster.status();
    const applied = before.directories[0]!.appliedIndex;
    const stored = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const data = bytes(10_000 + i * 997, 100 + i);
        const info = await client.upload(data, { id: `placed-${i}`, contentType: 'image/jpeg' });
        return { data, info };
      }),
    );
    for (const { data, info } of stored) {
      expect(info.sha256).toBe(sha(data));
      expect(info.replicas).toBe(3);
      const got = await client.download(info.id);
      expect(sha(got.data)).toBe(sha(data));
      const st = await client.stat(info.id);
      expect(st).toMatchObject({ size: data.length, contentType: 'image/jpeg', sha256: sha(data) });
    }
    // Twenty writes and sixty reads later the directory holds no per-blob record and
    // its log gained no per-blob entry (only store and placement changes, if any).
    const after = await cluster.status();
    expect(after.extraReplicaBlobs).toBe(0n);
    const kinds = await entryKindsSince(applied, after.directories[0]!.appliedIndex);
    expect(
      kinds.filter(
        (k) =>
          k !== 'storeHealthChanged' &&
          k !== 'placementChanged' &&
          k !== 'storeRegistered' &&
          k !== 'leaderChanged',
      ),
    ).toEqual([]);

    const listed = new Set<string>();
    let token = '';
    do {
      const page = await client.list({ pageSize: 7, pageToken: token, prefix: 'placed-' });
      for (const b of page.blobs) listed.add(b.id);
      token = page.nextPageToken;
    } while (token);
    expect([...listed].sort()).toEqual(stored.map((b) => b.info.id).sort());

    const victim = stored[0]!.info.id;
    expect(await client.delete(victim)).toBe(true);
    await expect(client.download(victim)).rejects.toBeInstanceOf(NotFoundError);
    await expect(client.stat(victim)).rejects.toBeInstanceOf(NotFoundError);
    // A re-upload after a delete stores it again.
    const again = await client.upload(stored[0]!.data, { id: victim });
    expect(again.sha256).toBe(sha(stored[0]!.data));
    expect(sha((await client.download(victim)).data)).toBe(sha(stored[0]!.data));
  });

  it('a retried upload keeps its cookie; other content under the same id is ALREADY_EXISTS', async () => {
    const data = bytes(5_000, 7);
    const first = (await blobs().put({ blobId: 'retry-me', data })).blob!;
    const second = (await blobs().put({ blobId: 'retry-me', data })).blob!;
    expect(second.cookie).toBe(first.cookie);
    expect(first.cookie).not.toBe(0n);
    await expect(blobs().put({ blobId: 'retry-me', data: bytes(5_000, 8) })).rejects.toThrow(/already/i);
  });

  it("a gateway's Write with forward_to and Delete carry its directory leader's term: stores refuse term 0 from a gateway, nothing reaches a replica, the blob stays", async () => {
    const codeOf = (p: Promise<unknown>) =>
      p.then(
        () => 'OK',
        (e: unknown) => Code[ConnectError.from(e).code],
      );
    const data = bytes(8_000, 77);
    const info = await client.upload(data, { id: 'fenced-keep' });
    const s = await cluster.status();
    const address = (storeId: string) => cluster.stores.find((p) => p.name === storeId)!.address;
    // The test's clients show a gateway's certificate (test/helpers/setup-identity.ts).
    const members = (id: string) =>
      s.placementGroups[placementGroupOf(id, GROUPS)]!.members.map((m) => ({
        storeId: m.storeId,
        address: address(m.storeId),
      }));
    const [first, ...rest] = members('fenced-new');
    const write = (term: bigint) =>
      writeBlob(storeClient(first!.address), 'fenced-new', bytes(4_000, 78), { forwardTo: rest, term });
    expect(await codeOf(write(0n))).toBe('Unavailable');
    for (const m of [first!, ...rest]) {
      expect(await codeOf(storeClient(m.address).stat({ blobId: 'fenced-new' }))).toBe('NotFound');
    }
    for (const m of members('fenced-keep')) {
      expect(await codeOf(storeClient(m.address).delete({ blobId: 'fenced-keep', term: 0n }))).toBe(
        'Unavailable',
      );
      expect(sha(await readBlob(storeClient(m.address), 'fenced-keep'))).toBe(sha(data));
    }
    // The gateway's own calls pass: it sends the term of the leader its view follows.
    expect(sha((await client.download(info.id)).data)).toBe(sha(data));
    expect(await client.delete(info.id)).toBe(true);
    for (const m of members('fenced-keep')) {
      expect(await codeOf(storeClient(m.address).stat({ blobId: 'fenced-keep' }))).toBe('NotFound');
    }
    const again = await client.upload(bytes(4_000, 78), { id: 'fenced-new' });
    expect(again.replicas).toBe(3);
    expect(s.term).toBeGreaterThan(0n);
  });

  it('a lost store is replaced in its groups by a JOINING member; reads carry on meanwhile', async () => {
    const data = bytes(20_000, 55);
    const info = await client.upload(data, { id: 'survivor' });
    const s = await cluster.status();
    const group = s.placementGroups[placementGroupOf('survivor', GROUPS)]!;
    const lostId = group.members[0]!.storeId;
    const idx = cluster.stores.findIndex((p) => p.name === lostId);
    expect(idx).toBeGreaterThanOrEqual(0);
    await cluster.stores[idx]!.kill();
    // Reads go to the other members.
    expect(sha((await client.download(info.id)).data)).toBe(sha(data));
    const replaced = await waitFor('the lost member to be replaced', async () => {
      const now = (await cluster.status()).placementGroups[group.group]!;
      return now.members.some((m) => m.storeId === lostId) ? undefined : now;
    });
    expect(replaced.members).toHaveLength(3);
    const joined = replaced.members.find((m) => !group.members.some((x) => x.storeId === m.storeId));
    expect(joined?.state).toBe(PlacementMemberState.JOINING);
    // Writes to the group flow again (the JOINING member takes them).
    const next = await waitFor('a write to the repaired group', async () => {
      for (let i = 0; i < 200; i++) {
        const id = `after-loss-${i}`;
        if (placementGroupOf(id, GROUPS) === group.group) return client.upload(bytes(3_000, i), { id });
      }
      return undefined;
    });
    expect(next.replicas).toBe(3);
    // The replication manager backfills the new member and makes it ACTIVE; it then
    // holds the blob written before the loss, byte-identical.
    const active = await waitFor('the new member to be backfilled and ACTIVE', async () => {
      const now = (await cluster.status()).placementGroups[group.group]!;
      const m = now.members.find((x) => x.storeId === joined?.storeId);
      return m?.state === PlacementMemberState.ACTIVE ? m : undefined;
    });
    const holder = cluster.stores.find((p) => p.name === active.storeId)!;
    const copy = await readBlob(storeClient(holder.address), 'survivor');
    expect(sha(copy)).toBe(sha(data));
  });
});
