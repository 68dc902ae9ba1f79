import { createHash } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { type NeedleFacts, NeedleFactsSchema } from '../../../gen/haystack/v1/store_pb.js';
import { placementGroupOf } from '../../../internal/common/placement.js';
import { ReplicationManager } from '../../../internal/replication/manager.js';
import type { StoreCalls } from '../../../internal/replication/store-calls.js';
import { createLogger } from '../../../internal/server/logger.js';
import { FakeDirectory, testConfig, until } from './fakes.js';

/** One store's newest needle of an id, as the store.proto contract describes it. */
export interface FakeNeedle {
  stamp: number;
  deleted: boolean;
  cookie: bigint;
  data: string;
  corrupt: boolean;
}

/**
 * In-memory stores keyed by address (= store id) that follow the placement part
 * of the store.proto contract: stamps per id, Stat, ListPlacementGroup (id order),
 * GetPlacementDigests, Replicate keep_stamp, Delete written_at_ms.
 */
export class FakePlacementStores {
  readonly needles = new Map<string, Map<string, FakeNeedle>>();
  readonly down = new Set<string>();
  /** Replicate calls: keep_stamp or not. */
  readonly replicateCalls: { from: string; to: string; blobId: string; keepStamp: boolean }[] = [];
  readonly deleteCalls: { store: string; blobId: string; writtenAtMs: bigint }[] = [];
  listCalls = 0;
  private clock = 1_000_000;
  /** Runs after a Replicate applied, before it answers. */
  afterReplicate?: (storeId: string, blobId: string) => Promise<void>;
  /** Runs after a GetPlacementDigests was computed, before it answers. */
  afterDigests?: (storeId: string) => void | Promise<void>;
  /** An error a target answers Replicate with before it reads the source (its own needle is damaged…). */
  refuseReplicate?: (storeId: string, blobId: string) => ConnectError | undefined;

  on(storeId: string): Map<string, FakeNeedle> {
    let m = this.needles.get(storeId);
    if (!m) {
      m = new Map();
      this.needles.set(storeId, m);
    }
    return m;
  }

  private tick(after = 0): number {
    this.clock = Math.max(this.clock + 1, after + 1);
    return this.clock;
  }

  /** A gateway write reaching `stores` (one stamp, as the first member assigns it). */
  write(stores: string[], blobId: string, data = `content-of-${blobId}`): number {
    const stamp = this.tick();
    for (const s of stores)
      this.on(s).set(blobId, { stamp, deleted: false, cookie: 7n, data, corrupt: false });
    return stamp;
  }

  /** A gateway delete reaching `stores`. */
  remove(stores: string[], blobId: string): void {
    const stamp = this.tick(Math.max(...stores.map((s) => this.on(s).get(blobId)?.stamp ?? 0)));
    for (const s of stores)
      this.on(s).set(blobId, { stamp, deleted: true, cookie: 0n, data: '', corrupt: false });
  }

  get(storeId: string, blobId: string): FakeNeedle | undefined {
    return this.on(storeId).get(blobId);
  }

  live(storeId: string, blobId: string): boolean {
    const n = this.get(storeId, blobId);
    return n !== undefined && !n.deleted;
  }

  private facts(blobId: string, n: FakeNeedle): NeedleFacts {
    return create(NeedleFactsSchema, {
      blobId,
      cookie: n.cookie,
      size: BigInt(n.data.length),
      sha256: n.deleted ? new Uint8Array() : createHash('sha256').update(n.data).digest(),
      writtenAtMs: BigInt(n.stamp),
      deleted: n.deleted,
      volumeId: 1,
    });
  }

  client(address: string): StoreCalls {
    const check = () => {
      if (this.down.has(address)) throw new ConnectError('connection refused', Code.Unavailable);
    };
    const here = () => this.on(address);
    const fake = {
      stat: async (req: { blobId: string; includeDeleted: boolean }) => {
        check();
        const n = here().get(req.blobId);
        if (!n || (n.deleted && !req.includeDeleted)) throw new ConnectError('no such needle', Code.NotFound);
        return { needle: this.facts(req.blobId, n) };
      },
      replicate: async (req: {
        blobId: string;
        cookie: bigint;
        keepStamp: boolean;
        source?: { storeId: string; address: string };
      }) => {
        check();
        const refused = this.refuseReplicate?.(address, req.blobId);
        if (refused) throw refused;
        const src = req.source?.address ?? '';
        if (this.down.has(src)) throw new ConnectError('source unreachable', Code.Unavailable);
        const n = this.on(src).get(req.blobId);
        if (!n || n.deleted) throw new ConnectError('source lacks it', Code.NotFound);
        if (n.corrupt) throw new ConnectError('checksum mismatch', Code.DataLoss);
        this.replicateCalls.push({ from: src, to: address, blobId: req.blobId, keepStamp: req.keepStamp });
        const local = here().get(req.blobId);
        if (req.keepStamp) {
          // A needle here as new or newer is kept (store.proto, ReplicateRequest.keep_stamp).
          if (!local || local.stamp < n.stamp) here().set(req.blobId, { ...n, corrupt: false });
        } else if (!local || local.deleted) {
          here().set(req.blobId, { ...n, corrupt: false, stamp: this.tick(local?.stamp ?? 0) });
        }
        await this.afterReplicate?.(address, req.blobId);
        return { replica: { storeId: address, volumeId: 1, offset: 0n }, size: BigInt(n.data.length) };
      },
      delete: async (req: { blobId: string; writtenAtMs: bigint }) => {
        check();
        this.deleteCalls.push({ store: address, blobId: req.blobId, writtenAtMs: req.writtenAtMs });
        const local = here().get(req.blobId);
        const stamp = req.writtenAtMs > 0n ? Number(req.writtenAtMs) : this.tick(local?.stamp ?? 0);
        // A newer needle here is kept; a tombstone wins a tie.
        if (local && local.stamp > stamp) return { found: false };
        here().set(req.blobId, { stamp, deleted: true, cookie: 0n, data: '', corrupt: false });
        return { found: local !== undefined && !local.deleted };
      },
      listPlacementGroup: async (req: {
        groupCount: number;
        group: number;
        pageToken: string;
        pageSize: number;
        includeDeleted: boolean;
      }) => {
        check();
        this.listCalls++;
        const ids = [...here().entries()]
          .filter(
            ([id, n]) =>
              placementGroupOf(id, req.groupCount) === req.group && (req.includeDeleted || !n.deleted),
          )
          .map(([id]) => id)
          .sort()
          .filter((id) => id > req.pageToken);
        const page = ids.slice(0, Math.min(1000, req.pageSize || 100));
        return {
          needles: page.map((id) => this.facts(id, here().get(id) as FakeNeedle)),
          nextPageToken: page.length < ids.length ? (page.at(-1) ?? '') : '',
        };
      },
      getPlacementDigests: async (req: { groupCount: number }) => {
        check();
        const by = new Map<number, { needles: bigint; digest: bigint }>();
        for (const [id, n] of here()) {
          const g = placementGroupOf(id, req.groupCount);
          const d = by.get(g) ?? { needles: 0n, digest: 0n };
          const mix = createHash('sha256')
            .update(`${id}|${n.stamp}|${n.deleted}`)
            .digest()
            .readBigUInt64BE(0);
          by.set(g, { needles: d.needles + 1n, digest: d.digest ^ mix });
        }
        await this.afterDigests?.(address);
        return {
          digests: [...by.entries()].sort(([a], [b]) => a - b).map(([group, d]) => ({ group, ...d })),
        };
      },
      scrub: async () => ({ needlesChecked: 0n, bytesChecked: 0n, corrupt: [] }),
      listNeedles: async () => ({ needles: [], nextPageToken: '' }),
    };
    return fake as unknown as StoreCalls;
  }
}

/**
 * A manager on a FakeDirectory in placement mode and FakePlacementStores: stores
 * s1..sN in zones z0..z2, groups as given ([storeId, 'A' | 'J'] per member).
 */
export function placementSetup(
  groups: [string, 'A' | 'J'][][],
  env: Record<string, string> = {},
  stores = ['s1', 's2', 's3', 's4', 's5'],
  clocks: { now?: () => number } = {},
) {
  const cfg = testConfig({
    EXTRA_REMOVAL_GRACE: '150ms',
    ANTI_ENTROPY_INTERVAL: '1h',
    ANTI_ENTROPY_SETTLE: '0',
    NIGHTLY_AUDIT_HOUR: String((new Date().getHours() + 12) % 24),
    ...env,
  });
  const dir = new FakeDirectory();
  const fs = new FakePlacementStores();
  for (const [i, s] of stores.entries()) dir.addStore(s, `z${i % 3}`);
  dir.initPlacement(groups);
  const m = new ReplicationManager({
    cfg,
    log: createLogger('replication', 'test', 'silent'),
    directory: dir,
    stores: (s) => fs.client(s.address),
    lease: undefined,
    ...clocks,
  });
  return { cfg, dir, fs, m };
}

/** A blob id that falls in `group` of `count` groups (the n-th such id). */
export function idInGroup(group: number, count: number, n = 0, prefix = 'b'): string {
  let seen = 0;
  for (let i = 0; ; i++) {
    const id = `${prefix}${i}`;
    if (placementGroupOf(id, count) === group && seen++ === n) return id;
  }
}

/** A group of s1, s2, s3, all ACTIVE. */
export const ALL_ACTIVE: [string, 'A'][] = [
  ['s1', 'A'],
  ['s2', 'A'],
  ['s3', 'A'],
];

/** A group of s1, s2 ACTIVE and s4 JOINING. */
export const S4_JOINING: [string, 'A' | 'J'][] = [
  ['s1', 'A'],
  ['s2', 'A'],
  ['s4', 'J'],
];

/** placementSetup, started and active; the manager is pushed to `managers` (stopped by the test's afterEach). */
export async function startedPlacement(
  managers: ReplicationManager[],
  groups: [string, 'A' | 'J'][][],
  env: Record<string, string> = {},
  prepare?: (fs: FakePlacementStores) => void,
) {
  const t = placementSetup(groups, env);
  managers.push(t.m);
  prepare?.(t.fs);
  t.m.start();
  await until(() => t.m.active && t.m.mirror.loaded && t.m.placementMode);
  return t;
}
