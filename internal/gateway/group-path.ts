import { randomBytes } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { type Client, Code, ConnectError } from '@connectrpc/connect';
import type { BlobInfo } from '../../gen/haystack/v1/blob_pb.js';
import {
  type BlobMeta,
  type ReplicaLocation,
  ReplicaLocationSchema,
  StoreHealth,
  type StoreTarget,
} from '../../gen/haystack/v1/common_pb.js';
import { type PlacementGroup, PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import type { NeedleFacts, StoreService } from '../../gen/haystack/v1/store_pb.js';
import { placementGroupOf } from '../common/placement.js';
import { STUB_CONTENT_TYPE } from '../common/shard-key.js';
import { readOrder } from '../directory/health.js';
import type { StoreAt } from '../rpc/clients.js';
import { fencedTerm } from '../rpc/errors.js';
import { isPeerIdentityMismatch } from '../security/tls-config.js';
import type { Logger } from '../server/logger.js';
import { checkId, invalid, metaFromNeedle, toInfo } from './blob-info.js';
import type { DirectoryApi } from './directory.js';
import type { DoneWrite, MetadataPath, WritePlan } from './metadata-path.js';
import type { PlacementView } from './placement-view.js';

/** The store calls the placement path makes besides Write and Read. */
export type PlacementStoreApi = Pick<
  Client<typeof StoreService>,
  'stat' | 'delete' | 'listPlacementGroup' | 'readShard'
>;

const token = (group: number, inner: string) => `${group}.${Buffer.from(inner).toString('base64url')}`;

/** Why a write or delete that did not reach every member was refused at ack time (metrics label). */
export type AckRefusal = 'group_changed' | 'map_stale';

/** The ack-time check of writes and deletes that did not reach every member of their group. */
export interface AckCheck {
  /** MAP_STALE_AFTER: the oldest confirmation of the map such an ack may rely on (ms). */
  mapStaleAfterMs: number;
  /** The directory leader's commit index (leaderCommitIndex): what confirms the map current. */
  leaderIndex(): Promise<bigint>;
  onRefused?(reason: AckRefusal): void;
}

/** Placement groups a List call visits at most before it answers (a page may be short). */
const GROUPS_PER_LIST_CALL = 64;

/**
 * The placement-group metadata path: a blob's stores follow from its id and the
 * followed placement map, so writes, reads and deletes need no directory call
 * (a delete asks the directory once, for a hot blob's extra replicas).
 *
 * Rules (docs/design/metadata-at-scale.md):
 * - A write goes to every member of the group (ACTIVE and JOINING) except JOINING
 *   members that are DOWN, and is acknowledged once each of those holds it
 *   durably — at least MIN_REPLICA_COUNT of them, one ACTIVE. The directory
 *   demotes a DOWN member to JOINING within a second, and a JOINING member serves
 *   no reads until it has been caught up, so a write it missed is never hidden.
 * - Such a write (or delete) that did not reach every member is acknowledged only
 *   if, in a map the directory leader confirmed current within MAP_STALE_AFTER,
 *   every member it missed is still JOINING and DOWN; else UNAVAILABLE, and the
 *   retry reaches the member. The manager compares a JOINING member only once its
 *   store has been HEALTHY (and it a member) for BACKFILL_SETTLE > MAP_STALE_AFTER,
 *   so every write it missed and that is acknowledged is on the ACTIVE members by
 *   then (rule 2 of docs/design/metadata-at-scale.md).
 * - A read goes to ACTIVE members and extra replicas, healthiest first. A blob is
 *   NOT_FOUND only when every store asked answered NOT_FOUND: one member that
 *   missed a write (a gateway's stale map) never hides it while another has it.
 * - A delete writes a tombstone on every member and extra replica, all durable
 *   before the answer. Stores order needles by stamp, so a later re-upload of the
 *   id wins over the tombstone and an older copy never wins over it.
 */
export class GroupPath implements MetadataPath {
  constructor(
    private readonly view: PlacementView,
    private readonly stores: (store: StoreAt) => PlacementStoreApi,
    private readonly directory: Pick<DirectoryApi, 'delete' | 'updateReplicas'>,
    private readonly log: Logger,
    private readonly storeTimeoutMs: number,
    /** MIN_REPLICA_COUNT: members that must hold a write before it is acknowledged. */
    private readonly minReplicas: number,
    private readonly ack: AckCheck,
  ) {}

  private group(blobId: string): PlacementGroup {
    const p = this.view.state.placement;
    const g = p.groupFor(blobId);
    if (!g || g.members.length === 0) {
      throw new ConnectError(
        `placement group ${placementGroupOf(blobId, p.groupCount)} has no stores yet: the directory places groups once enough stores are up`,
        Code.Unavailable,
      );
    }
    return g;
  }

  private target(storeId: string): StoreTarget & { health: StoreHealth } {
    const rec = this.view.state.stores.get(storeId);
    return {
      $typeName: 'haystack.v1.StoreTarget',
      storeId,
      address: rec?.address ?? '',
      zone: rec?.zone ?? '',
      health: rec?.health ?? StoreHealth.UNSPECIFIED,
    };
  }

  /** A member no write or delete is sent to when it is JOINING: its store is DOWN or has no address. */
  private down(storeId: string): boolean {
    const t = this.target(storeId);
    return t.health === StoreHealth.DOWN || !t.address;
  }

  /**
   * The stores a write or delete of the blob goes to: every member except JOINING
   * ones that are DOWN (the directory demoted them, so they serve no reads until
   * caught up). UNAVAILABLE, naming the stores, when an ACTIVE member is DOWN (the
   * directory demotes it within a second), when fewer than MIN_REPLICA_COUNT
   * members remain, or when none of them is ACTIVE.
   */
  private targets(blobId: string): { group: PlacementGroup; targets: (StoreTarget & { active: boolean })[] } {
    const g = this.group(blobId);
    const members = g.members.map((m) => ({ m, t: this.target(m.storeId) }));
    const isDown = (x: (typeof members)[number]) => this.down(x.m.storeId);
    const active = (x: (typeof members)[number]) => x.m.state === PlacementMemberState.ACTIVE;
    const activeDown = members.filter((x) => active(x) && isDown(x));
    const live = members.filter((x) => !isDown(x));
    const need = Math.min(this.minReplicas, members.length);
    if (activeDown.length > 0 || live.length < need || !live.some(active)) {
      const down = members
        .filter(isDown)
        .map((x) => x.m.storeId)
        .sort();
      const state =
        `placement group ${g.group} cannot take a write now: ${down.join(', ') || 'no store'} DOWN, ` +
        `${live.length} member(s) up (${live.filter(active).length} ACTIVE), MIN_REPLICA_COUNT ${need}; `;
      if (live.length >= need && live.some(active)) {
        // Only the demotion is missing: it comes within a second.
        throw new ConnectError(
          `${state}retry: the directory demotes a DOWN member to JOINING within a second`,
          Code.Unavailable,
        );
      }
      // Too few members up: no retry helps until a store returns or is replaced. Still
      // UNAVAILABLE (transient: stores come back), but the operator is told what to do.
      const inGroup = new Set(g.members.map((m) => m.storeId));
      const spare = [...this.view.state.stores.values()].filter(
        (r) => !inGroup.has(r.storeId) && r.health === StoreHealth.HEALTHY && !r.draining,
      ).length;
      throw new ConnectError(
        `${state}writes to it resume when ${down.join(' or ') || 'a member'} is back, or after ` +
          'PLACEMENT_REPLACE_AFTER once the directory replaces a DOWN member with a HEALTHY store outside the group ' +
          (spare > 0
            ? `(${spare} such store(s) now); retry later`
            : `(there is none: restart ${down.join(' / ') || 'the DOWN stores'} or add a store); retry later`),
        Code.Unavailable,
      );
    }
    // The first target receives and forwards: a healthy ACTIVE member.
    const first = live.find((x) => active(x) && x.t.health === StoreHealth.HEALTHY) ?? live.find(active);
    const ordered = [first, ...live.filter((x) => x !== first)].flatMap((x) =>
      x
        ? [
            {
              $typeName: 'haystack.v1.StoreTarget' as const,
              storeId: x.t.storeId,
              address: x.t.address,
              zone: x.t.zone,
              active: active(x),
            },
          ]
        : [],
    );
    return { group: g, targets: ordered };
  }

  async planWrite(blobId: string, _size: bigint, replicaCount: number): Promise<WritePlan> {
    const known = this.view.state.stores.size;
    if (replicaCount > known) {
      // No retry helps until stores are added (the directory's rule for per-blob writes).
      throw new ConnectError(
        `replica_count ${replicaCount} is above the ${known} stores in the cluster: ask for at most ${known} or add stores`,
        Code.FailedPrecondition,
      );
    }
    const { group, targets } = this.targets(blobId);
    let cookie = 0n;
    while (cookie === 0n) cookie = randomBytes(8).readBigUInt64BE();
    const reached = new Set(targets.map((t) => t.storeId));
    return {
      cookie,
      targets: targets.map(({ active: _, ...t }) => t as StoreTarget),
      term: this.view.leaderTerm,
      replicaCount,
      skipped: group.members.map((m) => m.storeId).filter((id) => !reached.has(id)),
    };
  }

  /**
   * The ack-time check (rules above): every member of the blob's group the write or
   * delete did not reach must still be JOINING and DOWN, in a map confirmed current
   * within MAP_STALE_AFTER. Members the plan skipped that are back, and members added
   * meanwhile, would be caught up by a backfill that may already have compared them
   * without this write: UNAVAILABLE, and the retry (idempotent) reaches them.
   */
  private async checkMissed(
    what: 'write' | 'delete',
    blobId: string,
    reached: ReadonlySet<string>,
    skipped: readonly string[],
  ): Promise<void> {
    const missedIn = (g: PlacementGroup) => g.members.filter((m) => !reached.has(m.storeId));
    if (missedIn(this.group(blobId)).length === 0) return;
    // The map may move while the confirmation is awaited: what was missed is read after it.
    const confirmed = await this.view.confirmedWithin(this.ack.mapStaleAfterMs, this.ack.leaderIndex);
    const g = this.group(blobId);
    const missed = missedIn(g);
    if (!confirmed) {
      const ids = missed.map((m) => m.storeId);
      this.ack.onRefused?.('map_stale');
      this.log.warn(
        { blobId, group: g.group, missed: ids },
        `${what} not acknowledged: the placement map could not be confirmed current`,
      );
      throw new ConnectError(
        `placement group ${g.group}: the ${what} of ${blobId} did not reach ${ids.join(', ')}, and this ` +
          `gateway could not confirm its placement map current within MAP_STALE_AFTER ` +
          `(${this.ack.mapStaleAfterMs} ms: no directory leader answered, or the map lags it); retry`,
        Code.Unavailable,
      );
    }
    const changed = missed.filter((m) => m.state !== PlacementMemberState.JOINING || !this.down(m.storeId));
    if (changed.length === 0) return;
    const why = changed.map((m) =>
      !skipped.includes(m.storeId)
        ? `${m.storeId} joined it`
        : this.down(m.storeId)
          ? `${m.storeId} is ${PlacementMemberState[m.state]}`
          : `${m.storeId} is back`,
    );
    this.ack.onRefused?.('group_changed');
    this.log.warn(
      { blobId, group: g.group, stores: changed.map((m) => m.storeId) },
      `${what} not acknowledged: its placement group changed while it was in flight`,
    );
    throw new ConnectError(
      `placement group ${g.group} changed while the ${what} was in flight: ${why.join(', ')}; retry`,
      Code.Unavailable,
    );
  }

  async finishWrite(w: DoneWrite): Promise<BlobInfo> {
    await this.checkMissed(
      'write',
      w.blobId,
      new Set(w.plan.targets.map((t) => t.storeId)),
      w.plan.skipped ?? [],
    );
    const g = this.group(w.blobId);
    const extras = this.view.state.placement.extras.get(w.blobId);
    const members = g.members.length;
    if (w.plan.replicaCount > members + (extras?.replicas.length ?? 0)) {
      // More copies than the group holds: the replication manager adds extra replicas.
      try {
        await this.directory.updateReplicas({ blobId: w.blobId, targetReplicaCount: w.plan.replicaCount });
      } catch (err) {
        this.log.warn(
          { blobId: w.blobId, err: ConnectError.from(err).message },
          'could not raise the replica target; the blob keeps its group size',
        );
      }
    }
    const needle = w.written;
    return toInfo(
      metaFromNeedle(
        {
          blobId: w.blobId,
          cookie: needle.cookie || w.plan.cookie,
          size: w.size,
          sha256: w.sha256,
          contentType: w.contentType,
          fileName: w.fileName,
          writtenAtMs: needle.writtenAtMs || BigInt(Date.now()),
        } as NeedleFacts,
        [],
        Math.max(members, extras?.targetReplicaCount ?? 0, w.plan.replicaCount),
      ),
      // The copies that exist: the stores that acknowledged this write plus the blob's
      // extra replicas. Not the group's size: a DOWN JOINING member gets no copy, so a
      // write acknowledged by MIN_REPLICA_COUNT members while one is down says so
      // (replica_count < target_replica_count) instead of claiming the target
      // (test/integration/store-down-writes.test.ts).
      new Set([
        ...w.written.replicas.map((r) => r.storeId),
        ...(extras?.replicas ?? []).map((r) => r.storeId),
      ]).size,
    );
  }

  /** A blob's metadata from a store's needle facts; `replicas` as the read found them. */
  metaOf(needle: NeedleFacts, replicas: ReplicaLocation[]): BlobMeta {
    const target = this.view.state.placement.extras.get(needle.blobId)?.targetReplicaCount ?? 0;
    return metaFromNeedle(
      needle,
      replicas.map((x) => ({ $typeName: 'haystack.v1.Replica', storeId: x.storeId, volumeId: 0 })),
      Math.max(target, this.group(needle.blobId).members.length),
    );
  }

  /** Readable holders of a blob, best first: ACTIVE members and extra replicas. */
  readers(blobId: string): ReplicaLocation[] {
    const g = this.group(blobId);
    const extras = this.view.state.placement.extras.get(blobId)?.replicas ?? [];
    const ids = [
      ...g.members.filter((m) => m.state === PlacementMemberState.ACTIVE).map((m) => m.storeId),
      ...extras.map((r) => r.storeId),
    ];
    return readOrder(
      ids.map((id) => {
        const t = this.target(id);
        return create(ReplicaLocationSchema, {
          storeId: id,
          address: t.address,
          health: t.health,
          zone: t.zone,
        });
      }),
    ).filter((r) => r.address !== '');
  }

  async locate(blobId: string): Promise<{ meta: BlobMeta; replicas: ReplicaLocation[] }> {
    checkId(blobId);
    const replicas = this.readers(blobId);
    const errors: string[] = [];
    let notFound = 0;
    for (const r of replicas) {
      try {
        const res = await this.stores(r).stat({ blobId }, { timeoutMs: this.storeTimeoutMs });
        if (!res.needle) throw new ConnectError('store answered Stat without a needle', Code.Internal);
        // The store that answered first serves the bytes too.
        const ordered = [r, ...replicas.filter((x) => x !== r)];
        return { meta: this.metaOf(res.needle, ordered), replicas: ordered };
      } catch (e) {
        const err = ConnectError.from(e);
        if (err.code === Code.NotFound) notFound++;
        else errors.push(`${r.storeId}: ${Code[err.code]}: ${err.rawMessage}`);
      }
    }
    if (notFound > 0 && errors.length === 0)
      throw new ConnectError(`blob ${blobId} not found`, Code.NotFound);
    throw new ConnectError(
      `no replica of blob ${blobId} could be asked (${replicas.length} tried${errors.length ? `: ${errors.join('; ')}` : ''})`,
      Code.Unavailable,
    );
  }

  async delete(blobId: string): Promise<boolean> {
    checkId(blobId);
    const { group, targets: members } = this.targets(blobId);
    const reached = new Set(members.map((m) => m.storeId));
    const skipped = group.members.map((m) => m.storeId).filter((id) => !reached.has(id));
    // The directory drops the blob's extra replicas first and names them.
    const res = await this.directory.delete({ blobId });
    const targets = new Map<string, string>();
    for (const m of members) targets.set(m.storeId, m.address);
    for (const r of res.extraReplicas) targets.set(r.storeId, r.address);
    for (const r of this.view.state.placement.extras.get(blobId)?.replicas ?? []) {
      if (!targets.has(r.storeId)) targets.set(r.storeId, this.target(r.storeId).address);
    }
    const term = this.view.leaderTerm;
    const results = await Promise.allSettled(
      [...targets].map(async ([storeId, address]) => {
        if (!address) throw new ConnectError(`store ${storeId} has no known address`, Code.Unavailable);
        const r = await this.stores({ storeId, address })
          .delete({ blobId, term }, { timeoutMs: this.storeTimeoutMs })
          .catch((err: unknown) => {
            // Refused as deposed: the store names the newer term, the view may be behind (N5).
            const seen = fencedTerm(err);
            if (seen !== undefined) this.view.noteStoreTerm(seen);
            throw err;
          });
        return r.found;
      }),
    );
    const failed = results.flatMap((r, i) =>
      r.status === 'rejected' ? [`${[...targets.keys()][i]}: ${ConnectError.from(r.reason).rawMessage}`] : [],
    );
    if (failed.length > 0) {
      // A store that is not the one the map names there: retrying cannot help until the map is fixed.
      const misplaced = results.some((r) => r.status === 'rejected' && isPeerIdentityMismatch(r.reason));
      throw new ConnectError(
        `the delete of ${blobId} is not durable on every replica (${failed.join('; ')}); ` +
          (misplaced
            ? 'a store address in the placement map serves another store: fix the store records (DirectoryService.GetClusterStatus lists them), then retry'
            : 'retry (deletes are idempotent)'),
        misplaced ? Code.FailedPrecondition : Code.Unavailable,
      );
    }
    // A member that missed the tombstone and is caught up meanwhile could keep the blob live.
    await this.checkMissed('delete', blobId, reached, skipped);
    return res.found || results.some((r) => r.status === 'fulfilled' && r.value);
  }

  /**
   * Pages through placement groups in order, each from one readable member. The
   * token is `<group>.<store token>`. A call visits at most GROUPS_PER_LIST_CALL
   * groups, so a page may hold fewer than page_size blobs while more follow: go on
   * while next_page_token is not empty.
   */
  async list(
    pageSize: number,
    pageToken: string,
    prefix: string,
  ): Promise<{ blobs: BlobInfo[]; next: string }> {
    const size = Math.min(pageSize || 100, 1000);
    if (prefix && !/^[A-Za-z0-9._~-]*$/.test(prefix)) {
      throw invalid('prefix may only contain letters, digits and . _ ~ -');
    }
    const count = this.view.state.placement.groupCount;
    let group = 0;
    let inner = '';
    if (pageToken) {
      const m = /^(\d{1,5})\.([A-Za-z0-9_-]{0,2048})$/.exec(pageToken);
      if (!m || Number(m[1]) >= count) throw invalid('page_token is not one this service issued');
      group = Number(m[1]);
      inner = Buffer.from(m[2] ?? '', 'base64url').toString();
    }
    const blobs: BlobInfo[] = [];
    for (let visited = 0; group < count && visited < GROUPS_PER_LIST_CALL; visited++) {
      const g = this.view.state.placement.groups[group];
      const reader = g ? this.readersOfGroup(g)[0] : undefined;
      if (!g || !reader) {
        throw new ConnectError(
          `placement group ${group} has no readable store right now; retry`,
          Code.Unavailable,
        );
      }
      const res = await this.stores(reader).listPlacementGroup(
        { groupCount: count, group, pageToken: inner, pageSize: size - blobs.length, prefix },
        { timeoutMs: this.storeTimeoutMs },
      );
      // A cold blob's stub lists its own facts: its Stat answers the blob's (size, type, ColdRef).
      const needles = await Promise.all(
        res.needles.map(async (n) =>
          n.contentType === STUB_CONTENT_TYPE && !n.deleted
            ? ((await this.stores(reader).stat({ blobId: n.blobId }, { timeoutMs: this.storeTimeoutMs }))
                .needle ?? n)
            : n,
        ),
      );
      for (const n of needles) {
        const extras = this.view.state.placement.extras.get(n.blobId);
        const replicas = g.members.length + (extras?.replicas.length ?? 0);
        blobs.push(
          toInfo(
            metaFromNeedle(n, [], Math.max(g.members.length, extras?.targetReplicaCount ?? 0)),
            replicas,
          ),
        );
      }
      if (res.nextPageToken) {
        inner = res.nextPageToken;
        if (blobs.length >= size) return { blobs, next: token(group, inner) };
        continue;
      }
      group++;
      inner = '';
      if (blobs.length >= size) break;
    }
    return { blobs, next: group < count ? token(group, inner) : '' };
  }

  private readersOfGroup(g: PlacementGroup): ReplicaLocation[] {
    return readOrder(
      g.members
        .filter((m) => m.state === PlacementMemberState.ACTIVE)
        .map((m) => {
          const t = this.target(m.storeId);
          return create(ReplicaLocationSchema, { storeId: m.storeId, address: t.address, health: t.health });
        }),
    ).filter((r) => r.address !== '');
  }
}
