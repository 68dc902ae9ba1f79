import { Code, ConnectError } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { DirectoryRole } from '../../gen/haystack/v1/directory_pb.js';
import { DirectoryCluster, FakeStore } from '../helpers/directory-cluster.js';
import { httpsGet } from '../helpers/pki.js';

const sha = new Uint8Array(32).fill(7);

async function until<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function code(err: unknown): Code {
  return ConnectError.from(err).code;
}

describe('directory: three real instances on a real Redis, fake stores with real heartbeat streams', () => {
  let c: DirectoryCluster;
  let stores: FakeStore[];

  async function healthOf(id: string): Promise<StoreHealth | undefined> {
    const st = await c.client.getClusterStatus();
    return st.stores.find((s) => s.storeId === id)?.health;
  }

  /** Term of the cluster's first leader (a later leader inherits a log). */
  let firstTerm = 0n;

  async function put(id: string, replicaCount = 3) {
    const a = await c.client.allocateWrite({ blobId: id, size: 100n, replicaCount });
    const res = await c.client.commitWrite({
      blobId: id,
      cookie: a.cookie,
      size: 100n,
      sha256: sha,
      contentType: 'image/jpeg',
      replicas: a.stores.map((s, i) => ({ storeId: s.storeId, volumeId: i + 1 })),
    });
    return { a, res };
  }

  beforeAll(async () => {
    c = await DirectoryCluster.start();
    await c.waitLeader();
    firstTerm = (await c.client.getClusterStatus()).term;
    stores = [
      new FakeStore('s1', c.addresses, 'z1'),
      new FakeStore('s2', c.addresses, 'z2'),
      new FakeStore('s3', c.addresses, 'z3'),
      new FakeStore('s4', c.addresses, 'z1'),
    ].map((s) => s.start());
    await until('4 healthy stores', async () => {
      const st = await c.client.getClusterStatus();
      return st.stores.filter((s) => s.health === StoreHealth.HEALTHY).length === 4;
    });
  });

  afterAll(async () => {
    await Promise.all(stores?.map((s) => s.stop()) ?? []);
    await c?.stop();
  });

  it('reports one leader and two followers, all at the same term', async () => {
    const st = await c.client.getClusterStatus();
    expect(st.directories).toHaveLength(3);
    expect(st.directories.every((d) => d.reachable)).toBe(true);
    const roles = st.directories.map((d) => d.role).sort();
    expect(roles).toEqual([DirectoryRole.LEADER, DirectoryRole.FOLLOWER, DirectoryRole.FOLLOWER].sort());
    expect(new Set(st.directories.map((d) => d.term)).size).toBe(1);
    expect(st.leaderId).toBe(st.directories.find((d) => d.role === DirectoryRole.LEADER)?.directoryId);
  });

  it('allocates spread across zones, commits, and every follower reads its write with the commit index', async () => {
    const { a, res } = await put('photo-1.jpg');
    expect(a.cookie).not.toBe(0n);
    expect(new Set(a.stores.map((s) => s.zone)).size).toBe(3);
    expect(res.commitIndex).toBeGreaterThan(0n);
    expect(res.blob?.version).toBe(res.commitIndex);
    for (let i = 0; i < 3; i++) {
      const loc = await c.stub(i).locate({ blobIds: ['photo-1.jpg', 'missing'], minIndex: res.commitIndex });
      expect(loc.appliedIndex).toBeGreaterThanOrEqual(res.commitIndex);
      expect(loc.locations[0]?.found).toBe(true);
      expect(loc.locations[0]?.blob?.contentType).toBe('image/jpeg');
      expect(loc.locations[0]?.replicas.map((r) => r.storeId).sort()).toEqual(
        a.stores.map((s) => s.storeId).sort(),
      );
      expect(loc.locations[1]?.found).toBe(false);
    }
  });

  it('forwards writes sent to a follower to the leader, and CommitWrite is idempotent', async () => {
    const leader = await c.waitLeader();
    const follower = (leader + 1) % 3;
    const a = await c.stub(follower).allocateWrite({ blobId: 'fwd', size: 5n });
    // A retried allocation (the upload failed part-way) keeps the cookie, so stores
    // that already hold the needle accept the same content again.
    const retry = await c.stub(leader).allocateWrite({ blobId: 'fwd', size: 5n });
    expect(retry.cookie).toBe(a.cookie);
    const req = {
      blobId: 'fwd',
      cookie: a.cookie,
      size: 5n,
      sha256: sha,
      replicas: a.stores.map((s) => ({ storeId: s.storeId, volumeId: 1 })),
    };
    const first = await c.stub(follower).commitWrite(req);
    const again = await c.stub((leader + 2) % 3).commitWrite(req);
    expect(again.commitIndex).toBe(first.commitIndex);
    const other = await c
      .stub(leader)
      .commitWrite({ ...req, cookie: a.cookie + 1n })
      .catch((e: unknown) => e);
    expect(code(other)).toBe(Code.AlreadyExists);
    expect(code(await c.client.allocateWrite({ blobId: 'fwd', size: 1n }).catch((e: unknown) => e))).toBe(
      Code.AlreadyExists,
    );
  });

  it('rejects bad ids, too many replicas and too large blobs with messages a person can act on', async () => {
    for (const bad of ['', 'has space', 'x'.repeat(256), 'slash/id']) {
      const err = await c.client.allocateWrite({ blobId: bad, size: 1n }).catch((e: unknown) => e);
      expect(code(err)).toBe(Code.InvalidArgument);
    }
    const many = ConnectError.from(
      await c.client
        .allocateWrite({ blobId: 'many', size: 1n, replicaCount: 6 }, { deadlineMs: 500 })
        .catch((e) => e),
    );
    // More replicas than the cluster has stores: no retry helps, so not UNAVAILABLE.
    expect(many.code).toBe(Code.FailedPrecondition);
    expect(many.rawMessage).toMatch(/^replica_count 6 is above the 4 stores in the cluster/);
    const big = ConnectError.from(
      await c.client.allocateWrite({ blobId: 'big', size: 15n * 1024n ** 3n }).catch((e) => e),
    );
    expect(big.code).toBe(Code.ResourceExhausted);
    expect(big.rawMessage).toMatch(/need 3 stores with room for 15 GiB.*s1 has 10 GiB free/);
  });

  it('lists in id order with prefix and pages, counts replicas, updates replicas with a version check', async () => {
    for (const id of ['list-b', 'list-a', 'list-c', 'other-x']) await put(id, 2);
    const p1 = await c.client.list({ prefix: 'list-', pageSize: 2 });
    expect(p1.blobs.map((b) => b.blobId)).toEqual(['list-a', 'list-b']);
    const p2 = await c.client.list({ prefix: 'list-', pageSize: 2, pageToken: p1.nextPageToken });
    expect(p2.blobs.map((b) => b.blobId)).toEqual(['list-c']);
    expect(p2.nextPageToken).toBe('');

    const loc = await c.client.locate(['list-a']);
    const blob = loc.locations[0]?.blob;
    if (!blob) throw new Error('list-a not found');
    const missing = ['s1', 's2', 's3', 's4'].find(
      (s) => !blob.replicas.some((r) => r.storeId === s),
    ) as string;
    const stale = await c.manager
      .updateReplicas({
        blobId: 'list-a',
        add: [{ storeId: missing, volumeId: 9 }],
        expectedVersion: blob.version + 5n,
      })
      .catch((e: unknown) => e);
    expect(code(stale)).toBe(Code.FailedPrecondition);
    const up = await c.manager.updateReplicas({
      blobId: 'list-a',
      add: [{ storeId: missing, volumeId: 9 }],
      targetReplicaCount: 3,
      expectedVersion: blob.version,
    });
    expect(up.blob?.replicas).toHaveLength(3);
    expect(up.blob?.targetReplicaCount).toBe(3);
    const st = await c.client.getClusterStatus();
    const hist = Object.fromEntries(st.replicaHistogram.map((b) => [b.replicas, Number(b.blobs)]));
    expect(hist[2]).toBe(3);
    expect(Number(st.blobCount)).toBe(Object.values(hist).reduce((x, y) => x + y, 0));
  });

  it('VerifyBlobs counts committed replicas and allocations in flight', async () => {
    const { a } = await put('verify-1');
    await c.client.allocateWrite({ blobId: 'verify-inflight', size: 1n });
    const on = a.stores[0]?.storeId as string;
    const res = await c.manager.verifyBlobs(on, ['verify-1', 'verify-inflight', 'verify-unknown']);
    // A leader that took over a log (a lease lost under CPU starvation) keeps unseen ids for
    // ALLOCATION_TTL (docs/directory.md): only the cluster's first leader may call them unreferenced.
    const term = (await c.client.getClusterStatus()).term;
    const firstLeader = term === firstTerm;
    expect(res.referencedBlobIds).toEqual(
      firstLeader ? ['verify-1', 'verify-inflight'] : ['verify-1', 'verify-inflight', 'verify-unknown'],
    );
  });

  it('delivers tombstones to every replica, including a store that was down at the time', async () => {
    const { a } = await put('del-1');
    const onStores = a.stores.map((s) => s.storeId);
    const victim = stores.find((s) => s.id === onStores[0]) as FakeStore;
    await victim.stop();
    await until('victim DOWN', async () => (await healthOf(victim.id)) === StoreHealth.DOWN);
    const del = await c.client.delete('del-1');
    expect(del.found).toBe(true);
    expect((await c.client.delete('del-1')).found).toBe(false);
    const loc = await c.client.locate(['del-1'], del.commitIndex);
    expect(loc.locations[0]?.found).toBe(false);
    for (const s of stores.filter((x) => onStores.includes(x.id) && x !== victim)) {
      await until(`tombstone on ${s.id}`, async () => s.deletedIds().includes('del-1'));
    }
    // The id stays reserved while a tombstone is pending.
    const reuse = await c.client
      .allocateWrite({ blobId: 'del-1', size: 1n }, { deadlineMs: 300 })
      .catch((e) => e);
    expect(ConnectError.from(reuse).rawMessage).toMatch(/tombstones are still pending on/);
    const back = new FakeStore(victim.id, c.addresses, victim.zone).start();
    stores[stores.indexOf(victim)] = back;
    await until('tombstone on the store that came back', async () => back.deletedIds().includes('del-1'));
    // Once every store confirmed, the id is free again.
    await until(
      'id reusable',
      async () => (await c.client.allocateWrite({ blobId: 'del-1', size: 1n })).cookie > 0n,
    );
  });

  it('marks a store whose heartbeat stream is cut DOWN at once and stops using it', async () => {
    await until('all healthy', async () => {
      const st = await c.client.getClusterStatus();
      return st.stores.every((s) => s.health === StoreHealth.HEALTHY);
    });
    const { a } = await put('health-1', 4);
    expect(a.stores).toHaveLength(4);
    const victim = stores.find((s) => s.id === 's4') as FakeStore;
    const t0 = Date.now();
    await victim.stop();
    await until('s4 DOWN', async () => (await healthOf('s4')) === StoreHealth.DOWN, 2500);
    const took = Date.now() - t0;
    // A cut stream is noticed at once (tens of ms), well before STORE_DOWN_AFTER (1.2 s);
    // the bound leaves room for a loaded machine.
    expect(took).toBeLessThan(2500);
    for (let i = 0; i < 3; i++) {
      const loc = await c.stub(i).locate({ blobIds: ['health-1'] });
      expect(loc.locations[0]?.replicas.map((r) => r.storeId)).not.toContain('s4');
      expect(loc.locations[0]?.replicas).toHaveLength(3);
    }
    for (let k = 0; k < 5; k++) {
      const al = await c.client.allocateWrite({ blobId: `after-down-${k}`, size: 1n });
      expect(al.stores.map((s) => s.storeId)).not.toContain('s4');
    }
    const err = ConnectError.from(
      await c.client
        .allocateWrite({ blobId: 'need4', size: 1n, replicaCount: 4 }, { deadlineMs: 300 })
        .catch((e) => e),
    );
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toContain('s4 is DOWN');
    const back = new FakeStore('s4', c.addresses, 'z1').start();
    stores[stores.indexOf(victim)] = back;
    await until('s4 HEALTHY again', async () => (await healthOf('s4')) === StoreHealth.HEALTHY);
  });

  it('a store that stops heartbeating on an open stream goes DEGRADED, then DOWN', async () => {
    const s = stores.find((x) => x.id === 's2') as FakeStore;
    s.frozen = true;
    const t0 = Date.now();
    await until('s2 DEGRADED', async () => (await healthOf('s2')) === StoreHealth.DEGRADED, 3000);
    const degradedAt = Date.now() - t0;
    await until('s2 DOWN', async () => (await healthOf('s2')) === StoreHealth.DOWN, 3000);
    const downAt = Date.now() - t0;
    expect(degradedAt).toBeGreaterThanOrEqual(300);
    expect(downAt).toBeGreaterThanOrEqual(900);
    // STORE_DOWN_AFTER is 1.2 s; the slack is for a loaded 2-core machine.
    expect(downAt).toBeLessThan(4000);
    // DEGRADED and DOWN stores get no new blobs.
    const al = await c.client.allocateWrite({ blobId: 'while-s2-down', size: 1n, replicaCount: 3 });
    expect(al.stores.map((x) => x.storeId)).not.toContain('s2');
    s.unfreeze();
    await until('s2 HEALTHY', async () => (await healthOf('s2')) === StoreHealth.HEALTHY);
  });

  it('serves Prometheus metrics for commits, role, term and store health', async () => {
    const leader = await c.waitLeader();
    const metrics = async () => (await httpsGet(`https://${c.addresses[leader]}/metrics`)).body;
    await expect
      .poll(metrics, { timeout: 10_000 })
      .toMatch(/haystack_directory_stores\{[^}]*health="healthy"[^}]*\} 4/);
    const text = await metrics();
    // Unlabelled metrics print without braces (no default labels since haystack_process_info).
    expect(text).toMatch(/haystack_directory_commits_total(\{[^}]*\})? [1-9]/);
    expect(text).toContain('haystack_directory_commit_duration_seconds_bucket');
    expect(text).toMatch(/haystack_directory_role\{[^}]*role="leader"[^}]*\} 1/);
    expect(text).toMatch(/haystack_directory_term(\{[^}]*\})? [1-9]/);
    expect(text).toMatch(/haystack_directory_stores\{[^}]*health="healthy"[^}]*\} 4/);
  });
});
