import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { BlobState, StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import {
  GetClusterStatusResponseSchema,
  UpdatePlacementRequestSchema,
  UpdatePlacementResponseSchema,
  type UpdateReplicasRequest,
  UpdateReplicasRequestSchema,
  UpdateReplicasResponseSchema,
  VerifyBlobsResponseSchema,
  type WatchMetadataResponse,
  WatchMetadataResponseSchema,
} from '../../../gen/haystack/v1/directory_pb.js';
import {
  type LogEntry,
  LogEntrySchema,
  type PlacementMember,
  type PlacementMemberSchema,
  PlacementMemberState,
} from '../../../gen/haystack/v1/metadata_pb.js';
import { MetadataState } from '../../../internal/directory/state-machine.js';
import { type ReplicationConfig, readReplicationConfig } from '../../../internal/replication/config.js';
import type { DirectoryCalls } from '../../../internal/replication/directory-api.js';
import type { StoreCalls } from '../../../internal/replication/manager.js';

const GiB = 1024n ** 3n;

/** Manager config for unit tests: short periods, fast retries; `env` overrides. */
export function testConfig(env: Record<string, string> = {}): ReplicationConfig {
  return readReplicationConfig(
    {},
    {
      // Fakes in-process: no transport is ever opened.
      INSECURE_PLAINTEXT: '1',
      DIRECTORY_ADDRS: 'fake:1',
      STATS_REPORT_INTERVAL: '400ms',
      EWMA_PERIOD: '1s',
      EWMA_ALPHA: '0.5',
      DE_REPLICATION_GRACE_PERIOD: '600ms',
      MONITORING_INTERVAL: '300ms',
      GC_INTERVAL: '200ms',
      GC_GRACE_PERIOD: '500ms',
      SCRUB_INTERVAL: '0',
      RETRY_BACKOFF: '30ms',
      RETRY_BACKOFF_MAX: '100ms',
      // No gateway writes here: a JOINING member is compared at once (the settle test sets it).
      BACKFILL_SETTLE: '0',
      ...env,
    },
  );
}

/** An in-memory directory: a MetadataState, its log, and WatchMetadata over it. */
export class FakeDirectory implements DirectoryCalls {
  readonly state = new MetadataState();
  private readonly watchers = new Set<() => void>();
  private readonly entries: LogEntry[] = [];
  /** Blob ids with an allocation in flight (VerifyBlobs counts them referenced). */
  readonly inflight = new Set<string>();
  updates = 0;
  /** Runs after an UpdateReplicas is committed, before it is answered (a slow answer). */
  afterUpdate?: (req: UpdateReplicasRequest) => Promise<void>;
  /** Runs after a VerifyBlobs answer is computed, before it is returned. */
  afterVerify?: (storeId: string, blobIds: string[]) => Promise<void>;

  append(change: MessageInitShape<typeof LogEntrySchema>['change']): LogEntry {
    const e = create(LogEntrySchema, {
      index: this.state.appliedIndex + 1n,
      term: 1n,
      timestampMs: BigInt(Date.now()),
      change,
    });
    this.state.apply(e);
    this.entries.push(e);
    for (const w of this.watchers) w();
    return e;
  }

  addStore(storeId: string, zone = '', freeBytes = 10n * GiB): void {
    this.append({
      case: 'storeRegistered',
      value: {
        store: {
          storeId,
          address: storeId,
          zone,
          freeBytes,
          capacityBytes: 100n * GiB,
          health: StoreHealth.HEALTHY,
        },
      },
    });
  }

  setHealth(storeId: string, health: StoreHealth): void {
    this.append({ case: 'storeHealthChanged', value: { storeId, health } });
  }

  commit(blobId: string, storeIds: string[], size = 1000n, sha256 = new Uint8Array(32)): void {
    this.append({
      case: 'blobCommitted',
      value: {
        blob: {
          blobId,
          size,
          sha256,
          cookie: 7n,
          state: BlobState.ACTIVE,
          targetReplicaCount: 3,
          replicas: storeIds.map((storeId) => ({ storeId, volumeId: 1 })),
        },
      },
    });
  }

  holders(blobId: string): string[] {
    return (this.state.active(blobId)?.replicas ?? []).map((r) => r.storeId).sort();
  }

  /** Placement mode: `groups[i]` lists group i's members as [storeId, 'A' | 'J'] (ACTIVE, JOINING). */
  initPlacement(groups: [string, 'A' | 'J'][][]): void {
    this.append({
      case: 'placementChanged',
      value: {
        groupCount: groups.length,
        groups: groups.map((members, group) => ({ group, members: members.map(member) })),
      },
    });
  }

  /** Replaces a group's members outside the manager (an operator adding a store). */
  setGroup(group: number, members: [string, 'A' | 'J'][]): void {
    this.append({
      case: 'placementChanged',
      value: { groupCount: 0, groups: [{ group, members: members.map(member) }] },
    });
  }

  /** Placement mode: store ids of a blob's extra replicas, sorted. */
  extras(blobId: string): string[] {
    return (this.state.placement.extras.get(blobId)?.replicas ?? []).map((r) => r.storeId).sort();
  }

  placementUpdates = 0;
  /** Runs before an UpdatePlacement is checked (to move the group on meanwhile). */
  beforePlacementUpdate?: (group: number) => void;

  async updatePlacement(init: MessageInitShape<typeof UpdatePlacementRequestSchema>) {
    const req = create(UpdatePlacementRequestSchema, init);
    this.beforePlacementUpdate?.(req.group);
    const g = this.state.placement.groups[req.group];
    if (!g) throw new ConnectError('no such group', Code.NotFound);
    if (g.epoch !== req.expectedEpoch) throw new ConnectError('epoch moved', Code.FailedPrecondition);
    if (!req.members.some((m) => m.state === PlacementMemberState.ACTIVE)) {
      throw new ConnectError('no ACTIVE member', Code.InvalidArgument);
    }
    this.placementUpdates++;
    const e = this.append({
      case: 'placementChanged',
      value: { groupCount: 0, groups: [{ group: req.group, members: req.members }] },
    });
    return create(UpdatePlacementResponseSchema, {
      commitIndex: e.index,
      group: this.state.placement.groups[req.group],
    });
  }

  async updateReplicas(init: MessageInitShape<typeof UpdateReplicasRequestSchema>) {
    const req = create(UpdateReplicasRequestSchema, init);
    if (this.state.placement.enabled) {
      // As the directory does with placement on: the change applies to the blob's extras.
      this.updates++;
      const e = this.append({
        case: 'extraReplicasChanged',
        value: {
          blobId: req.blobId,
          added: req.add,
          removedStoreIds: req.removeStoreIds,
          targetReplicaCount: req.targetReplicaCount,
        },
      });
      const res = create(UpdateReplicasResponseSchema, { commitIndex: e.index });
      await this.afterUpdate?.(req);
      return res;
    }
    const b = this.state.active(req.blobId);
    if (!b) throw new ConnectError('no such blob', Code.NotFound);
    if (req.expectedVersion !== 0n && req.expectedVersion !== b.version) {
      throw new ConnectError('version moved', Code.FailedPrecondition);
    }
    this.updates++;
    const e = this.append({
      case: 'replicasChanged',
      value: {
        blobId: req.blobId,
        added: req.add,
        removedStoreIds: req.removeStoreIds,
        targetReplicaCount: req.targetReplicaCount,
      },
    });
    const res = create(UpdateReplicasResponseSchema, {
      commitIndex: e.index,
      blob: this.state.active(req.blobId),
    });
    await this.afterUpdate?.(req);
    return res;
  }

  async verifyBlobs(storeId: string, blobIds: string[]) {
    const res = create(VerifyBlobsResponseSchema, {
      referencedBlobIds: blobIds.filter(
        (id) =>
          this.inflight.has(id) || this.state.blobs.get(id)?.replicas.some((r) => r.storeId === storeId),
      ),
    });
    await this.afterVerify?.(storeId, blobIds);
    return res;
  }

  async clusterStatus() {
    return create(GetClusterStatusResponseSchema, { stores: [...this.state.stores.values()] });
  }

  watch(fromIndex: bigint, _watcher: string, signal: AbortSignal) {
    const self = this;
    async function* stream(): AsyncGenerator<WatchMetadataResponse> {
      let next = fromIndex;
      if (fromIndex === 0n) {
        const snap = self.state.toSnapshot();
        yield create(WatchMetadataResponseSchema, { msg: { case: 'snapshot', value: snap } });
        next = snap.index + 1n;
      }
      while (!signal.aborted) {
        const batch = self.entries.filter((e) => e.index >= next);
        if (batch.length > 0) {
          next = (batch.at(-1) as LogEntry).index + 1n;
          yield create(WatchMetadataResponseSchema, { msg: { case: 'entries', value: { entries: batch } } });
          continue;
        }
        await new Promise<void>((resolve) => {
          const wake = () => {
            self.watchers.delete(wake);
            resolve();
          };
          self.watchers.add(wake);
          signal.addEventListener('abort', wake, { once: true });
        });
      }
    }
    return { address: 'fake-directory', stream: stream() };
  }

  rotate(): void {}
}

function member([storeId, s]: [string, 'A' | 'J']): MessageInitShape<typeof PlacementMemberSchema> {
  return {
    storeId,
    state: s === 'A' ? PlacementMemberState.ACTIVE : PlacementMemberState.JOINING,
  } satisfies Partial<PlacementMember>;
}

interface Needle {
  data: string;
  writtenAt: number;
  corrupt: boolean;
}

/** In-memory stores keyed by address (= store id in these tests). */
export class FakeStores {
  readonly needles = new Map<string, Map<string, Needle>>();
  readonly down = new Set<string>();
  readonly failing = new Set<string>();
  /** Stores that refuse every Replicate as from a deposed sender (FAILED_PRECONDITION). */
  readonly deposing = new Set<string>();
  /** store → ids it holds a tombstone for (a copy supersedes it, as on a real store). */
  readonly tombstoned = new Map<string, Set<string>>();
  /** store → ids of corrupt needles a later copy superseded (scrub reports them as such). */
  readonly superseded = new Map<string, Set<string>>();
  /** store → ids it answers ALREADY_EXISTS for (it holds other content under the id). */
  readonly refusing = new Map<string, Set<string>>();
  replicateCalls: { from: string; to: string; blobId: string }[] = [];
  /** Runs after a Replicate is applied, before it is answered (a slow answer). */
  afterReplicate?: (storeId: string, blobId: string) => Promise<void>;
  /** Runs when a Delete is applied. */
  onDelete?: (storeId: string, blobId: string) => void;

  on(storeId: string): Map<string, Needle> {
    let m = this.needles.get(storeId);
    if (!m) {
      m = new Map();
      this.needles.set(storeId, m);
    }
    return m;
  }

  put(storeId: string, blobId: string, writtenAt = Date.now()): void {
    this.on(storeId).set(blobId, { data: `content-of-${blobId}`, writtenAt, corrupt: false });
  }

  tombstone(storeId: string, blobId: string): void {
    addTo(this.tombstoned, storeId, blobId);
  }

  refuse(storeId: string, blobId: string): void {
    addTo(this.refusing, storeId, blobId);
  }

  has(storeId: string, blobId: string): boolean {
    return this.on(storeId).has(blobId);
  }

  client(address: string): StoreCalls {
    const check = () => {
      if (this.down.has(address)) throw new ConnectError('connection refused', Code.Unavailable);
    };
    const fake = {
      replicate: async (req: { blobId: string; source?: { address: string } }) => {
        check();
        if (this.failing.has(address)) throw new ConnectError('disk on fire', Code.Internal);
        if (this.deposing.has(address))
          throw new ConnectError('the sender was deposed', Code.FailedPrecondition);
        const src = req.source?.address ?? '';
        if (this.down.has(src)) throw new ConnectError('source unreachable', Code.Unavailable);
        const n = this.on(src).get(req.blobId);
        if (!n) throw new ConnectError('source lacks it', Code.NotFound);
        if (n.corrupt) throw new ConnectError('checksum mismatch', Code.DataLoss);
        if (this.refusing.get(address)?.has(req.blobId)) {
          throw new ConnectError('exists with other content', Code.AlreadyExists);
        }
        this.replicateCalls.push({ from: src, to: address, blobId: req.blobId });
        // Idempotent over a live copy; a new needle supersedes a tombstone.
        if (!this.on(address).has(req.blobId)) {
          this.tombstoned.get(address)?.delete(req.blobId);
          this.on(address).set(req.blobId, { data: n.data, writtenAt: Date.now(), corrupt: false });
        }
        await this.afterReplicate?.(address, req.blobId);
        return { replica: { storeId: address, volumeId: 2, offset: 0n }, size: BigInt(n.data.length) };
      },
      delete: async (req: { blobId: string }) => {
        check();
        this.tombstone(address, req.blobId);
        const found = this.on(address).delete(req.blobId);
        this.onDelete?.(address, req.blobId);
        return { found };
      },
      scrub: async () => {
        check();
        const corrupt = [...this.on(address)]
          .filter(([, n]) => n.corrupt)
          .map(([blobId]) => ({ blobId, volumeId: 1, offset: 0n, reason: 'crc', superseded: false }));
        for (const blobId of this.superseded.get(address) ?? []) {
          corrupt.push({ blobId, volumeId: 1, offset: 8n, reason: 'crc (superseded)', superseded: true });
        }
        return { needlesChecked: BigInt(this.on(address).size), bytesChecked: 0n, corrupt };
      },
      listNeedles: async (req: { pageSize: number; pageToken: string }) => {
        check();
        const ids = [...this.on(address).keys()].sort().filter((id) => id > req.pageToken);
        const page = ids.slice(0, req.pageSize || 1000);
        return {
          needles: page.map((blobId) => ({
            blobId,
            volumeId: 1,
            size: 10n,
            writtenAtMs: BigInt(this.on(address).get(blobId)?.writtenAt ?? 0),
          })),
          nextPageToken: page.length < ids.length ? (page.at(-1) ?? '') : '',
        };
      },
    };
    return fake as unknown as StoreCalls;
  }
}

/**
 * A latch a fake call waits on, opened by the test when the event it waits for
 * happens; `pass(fallbackMs)` goes through anyway after that long, for when the
 * code under test (rightly) never lets the event happen.
 */
export class Gate {
  entered = false;
  private opened = false;
  private readonly waiters: (() => void)[] = [];

  open(): void {
    this.opened = true;
    for (const w of this.waiters.splice(0)) w();
  }

  async pass(fallbackMs: number): Promise<void> {
    this.entered = true;
    if (this.opened) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, fallbackMs);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

function addTo(m: Map<string, Set<string>>, storeId: string, blobId: string): void {
  let set = m.get(storeId);
  if (!set) {
    set = new Set();
    m.set(storeId, set);
  }
  set.add(blobId);
}

/** Polls until `fn` returns true (or throws after `ms`). */
export async function until(fn: () => boolean, ms = 5_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
