import { randomBytes } from 'node:crypto';
import { clone, create } from '@bufbuild/protobuf';
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import {
  type BlobMeta,
  BlobMetaSchema,
  BlobState,
  type StoreTarget,
} from '../../gen/haystack/v1/common_pb.js';
import {
  type AllocateWriteRequest,
  type AllocateWriteResponse,
  AllocateWriteResponseSchema,
  BlobLocationSchema,
  type CommitWriteRequest,
  type CommitWriteResponse,
  CommitWriteResponseSchema,
  DirectoryInstanceSchema,
  DirectoryRole,
  type DirectoryService,
  type DirectoryServiceDeleteRequest,
  type DirectoryServiceDeleteResponse,
  DirectoryServiceDeleteResponseSchema,
  type DirectoryServiceListRequest,
  DirectoryServiceListResponseSchema,
  type GetClusterStatusRequest,
  type GetClusterStatusResponse,
  GetClusterStatusResponseSchema,
  type LocateRequest,
  type LocateResponse,
  LocateResponseSchema,
  type UpdateReplicasRequest,
  type UpdateReplicasResponse,
  UpdateReplicasResponseSchema,
  type VerifyBlobsRequest,
  VerifyBlobsResponseSchema,
} from '../../gen/haystack/v1/directory_pb.js';
import { StoreRecordSchema } from '../../gen/haystack/v1/metadata_pb.js';
import { validateBlobId } from '../common/blob-id.js';
import {
  boundedFromPeer,
  onlyAsSelf,
  requireDirectoryPeer,
  requireSelf,
  termHeader,
} from '../security/peer-checks.js';
import { allocateStores } from './allocation.js';
import {
  AlreadyExistsError,
  NoPlacementError,
  NotFoundError,
  NotLeaderError,
  TombstonesPendingError,
  UnavailableError,
  VersionMismatchError,
} from './errors.js';
import { relayedMetadata, withMappedErrors } from './grpc-errors.js';
import { readOrder } from './health.js';
import type { DirectoryNode } from './node.js';
import { CATCHUP_TERM_HEADER, FORWARDED_HEADER, LEADER_ADDRESS_HEADER } from './peers.js';
import { PlacementAdmin } from './placement-admin.js';
import type { PlacementKeeper } from './placement-keeper.js';
import { estimateBlobCount, PlacementHandlers, placementHistogram } from './placement-service.js';
import { sameContent } from './state-machine.js';
import type { StoreRegistry } from './stores.js';
import { tierBytes } from './tier-bytes.js';

const MAX_LOCATE = 1000;
const MAX_VERIFY = 10_000;

interface PendingAllocation {
  cookie: bigint;
  storeIds: string[];
  replicaCount: number;
  atMs: number;
}

/** The DirectoryService handlers: reads from this instance's state, writes through the leader. */
export class DirectoryHandlers {
  /** Allocations not committed yet (leader only; VerifyBlobs counts them as referenced). */
  private readonly pending = new Map<string, PendingAllocation>();
  /** Per-blob serialization of changes on the leader (checks see the effect of the previous change). */
  private readonly locks = new Map<string, Promise<unknown>>();

  private readonly placement: PlacementHandlers;
  private readonly admin: PlacementAdmin;

  constructor(
    private readonly node: DirectoryNode,
    private readonly stores: StoreRegistry,
    keeper: PlacementKeeper,
  ) {
    this.placement = new PlacementHandlers(node, stores);
    this.admin = new PlacementAdmin(node, keeper);
  }

  onLeaderStop(): void {
    this.pending.clear();
  }

  impl(): ServiceImpl<typeof DirectoryService> {
    return withMappedErrors({
      allocateWrite: (req, ctx) => this.write('allocateWrite', req, ctx, () => this.allocate(req)),
      commitWrite: (req, ctx) => this.write('commitWrite', req, ctx, () => this.commit(req)),
      delete: (req, ctx) => this.write('delete', req, ctx, () => this.remove(req)),
      updateReplicas: (req, ctx) => this.write('updateReplicas', req, ctx, () => this.updateReplicas(req)),
      verifyBlobs: (req, ctx) => this.write('verifyBlobs', req, ctx, async () => this.verify(req)),
      locate: (req, ctx) => this.locate(req, ctx),
      updatePlacement: (req, ctx) =>
        this.write('updatePlacement', req, ctx, () => this.placement.updatePlacement(req)),
      drainStore: (req, ctx) => this.write('drainStore', req, ctx, () => this.admin.drainStore(req)),
      balancePlacement: (req, ctx) => this.write('balancePlacement', req, ctx, () => this.admin.balance(req)),
      list: (req) => this.list(req),
      // Edge checks (internal/security/peer-checks.ts): a store heartbeats only as
      // itself; log RPCs only from configured peers, with terms a peer can hold.
      heartbeat: (requests, ctx) => this.stores.heartbeat(onlyAsSelf(requests, ctx), ctx),
      watchMetadata: (req, ctx) => {
        const catchup = termHeader(ctx, CATCHUP_TERM_HEADER, this.node.currentTerm());
        if (req.includeUncommitted || catchup > 0n)
          requireDirectoryPeer(ctx, 'WatchMetadata of uncommitted entries');
        boundedFromPeer('from_index', req.fromIndex);
        return this.node.watch(req, ctx);
      },
      ackMetadata: (req, ctx) => {
        requireDirectoryPeer(ctx, 'AckMetadata');
        requireSelf(ctx, 'directory', req.directoryId, 'acknowledge entries');
        boundedFromPeer('term', req.term, this.node.currentTerm());
        boundedFromPeer('durable_index', req.durableIndex);
        return this.node.ackMetadata(req);
      },
      getLogState: (req, ctx) => {
        requireDirectoryPeer(ctx, 'GetLogState');
        if (req.term > 0n || req.candidateId !== '') {
          requireSelf(ctx, 'directory', req.candidateId, 'ask for votes');
        }
        boundedFromPeer('term', req.term, this.node.currentTerm());
        return this.node.getLogState(req);
      },
      getClusterStatus: (req) => this.clusterStatus(req),
    });
  }

  // ------------------------------------------------------------ forwarding

  /**
   * Runs a write on the leader: here when this instance leads, else forwarded once
   * to the leader it knows (the answer's header names the leader for the client).
   */
  private async write<
    M extends
      | 'allocateWrite'
      | 'commitWrite'
      | 'delete'
      | 'updateReplicas'
      | 'verifyBlobs'
      | 'updatePlacement'
      | 'drainStore'
      | 'balancePlacement',
    R,
  >(method: M, req: unknown, ctx: HandlerContext, here: () => Promise<R>): Promise<R> {
    if (this.node.role === 'leader') {
      this.node.requireLeader();
      return here();
    }
    const leader = this.node.leader();
    if (!leader)
      throw new UnavailableError(
        `no directory leader right now (${this.node.describeNoLeader()}): retry shortly`,
      );
    if (ctx.requestHeader.get(FORWARDED_HEADER)) {
      throw new NotLeaderError(`directory ${this.node.id} is not the leader (forwarded request)`, leader, {
        forwarded: true,
      });
    }
    const client = this.node.client(leader.address);
    const call = client[method] as (r: unknown, o: object) => Promise<R>;
    try {
      const res = await call.call(client, req, {
        headers: { [FORWARDED_HEADER]: this.node.id },
        timeoutMs: ctx.timeoutMs() ?? 10_000,
        signal: ctx.signal,
      });
      ctx.responseHeader.set(LEADER_ADDRESS_HEADER, leader.address);
      return res;
    } catch (err) {
      const ce = ConnectError.from(err);
      // Say so when the leader could not be reached (not when it answered UNAVAILABLE).
      const cause = ce.cause as { code?: unknown } | undefined;
      const transport = typeof cause?.code === 'string' && /^E[A-Z]+|^ERR_HTTP2/.test(cause.code);
      if (ce.code === Code.Unavailable && transport && !ce.metadata.get(LEADER_ADDRESS_HEADER)) {
        throw new ConnectError(
          `forwarding to the leader ${leader.id} at ${leader.address} failed: ${ce.rawMessage}`,
          Code.Unavailable,
          relayedMetadata(ce.metadata),
        );
      }
      throw ce;
    }
  }

  private async withBlobLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(id) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const settled = run.catch(() => {});
    this.locks.set(id, settled);
    void settled.then(() => {
      if (this.locks.get(id) === settled) this.locks.delete(id);
    });
    return run;
  }

  // ------------------------------------------------------------ writes

  private async allocate(req: AllocateWriteRequest): Promise<AllocateWriteResponse> {
    checkBlobId(req.blobId);
    // Before the leader has created a new cluster's placement groups (it waits for the
    // stores to settle), a per-blob write would be refused at CommitWrite once they
    // exist: UNAVAILABLE, retry.
    this.placement.requirePerBlob('AllocateWrite');
    const existing = this.node.state.blobs.get(req.blobId);
    if (existing?.state === BlobState.ACTIVE) {
      throw new AlreadyExistsError(`blob ${req.blobId} already exists`);
    }
    if (existing?.state === BlobState.DELETED) {
      throw new TombstonesPendingError(
        `blob ${req.blobId} was deleted and its tombstones are still pending on ${existing.replicas.map((r) => r.storeId).join(', ')}; reuse the id once they are done`,
      );
    }
    const count = req.replicaCount === 0 ? this.node.cfg.defaultReplicaCount : req.replicaCount;
    if (count > 16)
      throw new ConnectError(`replica_count ${count} is above the maximum 16`, Code.InvalidArgument);
    const known = this.stores.candidates().length;
    if (count > known) {
      // No retry helps until stores are added: not UNAVAILABLE.
      throw new ConnectError(
        `replica_count ${count} is above the ${known} stores in the cluster: ask for at most ${known} or add stores`,
        Code.FailedPrecondition,
      );
    }
    const res = allocateStores({
      candidates: this.stores.candidates().filter((c) => !c.draining),
      count,
      size: req.size,
      minFreeBytes: BigInt(this.node.cfg.minFreeBytes),
    });
    if (!res.ok) throw new NoPlacementError(res.message, res.code);
    this.expirePending();
    // A retried upload (the first attempt may have left its needle on some stores)
    // gets the same cookie, so those stores accept the same content again.
    let cookie = this.pending.get(req.blobId)?.cookie ?? 0n;
    while (cookie === 0n) cookie = randomBytes(8).readBigUInt64BE();
    this.pending.set(req.blobId, {
      cookie,
      storeIds: res.stores.map((s) => s.storeId),
      replicaCount: count,
      atMs: Date.now(),
    });
    return create(AllocateWriteResponseSchema, {
      blobId: req.blobId,
      cookie,
      stores: res.stores.map(
        (s) => ({ storeId: s.storeId, address: s.address, zone: s.zone }) as StoreTarget,
      ),
      term: this.node.leadTerm,
    });
  }

  private expirePending(): void {
    const cutoff = Date.now() - this.node.cfg.allocationTtlMs;
    for (const [id, p] of this.pending) if (p.atMs < cutoff) this.pending.delete(id);
  }

  private async commit(req: CommitWriteRequest): Promise<CommitWriteResponse> {
    checkBlobId(req.blobId);
    if (this.placement.enabled) throw PlacementHandlers.perBlobRefused('CommitWrite');
    if (req.sha256.length !== 32) {
      throw new ConnectError(`sha256 must be 32 bytes, got ${req.sha256.length}`, Code.InvalidArgument);
    }
    if (req.replicas.length === 0) throw new ConnectError('replicas must not be empty', Code.InvalidArgument);
    if (Buffer.byteLength(req.fileName) > 255) {
      throw new ConnectError('file_name must be at most 255 bytes of UTF-8', Code.InvalidArgument);
    }
    const seen = new Set<string>();
    for (const r of req.replicas) {
      if (seen.has(r.storeId))
        throw new ConnectError(`store ${r.storeId} is listed twice`, Code.InvalidArgument);
      seen.add(r.storeId);
      if (!this.node.state.stores.has(r.storeId)) {
        throw new ConnectError(`replica on unknown store ${r.storeId}`, Code.InvalidArgument);
      }
    }
    return this.withBlobLock(req.blobId, async () => {
      const existing = this.node.state.blobs.get(req.blobId);
      if (existing?.state === BlobState.ACTIVE) {
        if (sameContent(existing, req)) {
          // Idempotent retry: already committed.
          return create(CommitWriteResponseSchema, { commitIndex: existing.version, blob: existing });
        }
        throw new AlreadyExistsError(
          `blob ${req.blobId} is already committed with different content (cookie, size or sha256 differ)`,
        );
      }
      if (existing?.state === BlobState.DELETED) {
        throw new TombstonesPendingError(`blob ${req.blobId} was deleted and its tombstones are pending`);
      }
      const alloc = this.pending.get(req.blobId);
      const blob = create(BlobMetaSchema, {
        blobId: req.blobId,
        cookie: req.cookie,
        size: req.size,
        sha256: req.sha256,
        contentType: req.contentType || 'application/octet-stream',
        fileName: req.fileName,
        replicas: req.replicas,
        targetReplicaCount: alloc?.replicaCount ?? this.node.cfg.defaultReplicaCount,
        createdAtMs: BigInt(Date.now()),
        state: BlobState.ACTIVE,
      });
      const index = await this.node.propose({ case: 'blobCommitted', value: { blob } });
      if (this.pending.get(req.blobId) === alloc) this.pending.delete(req.blobId);
      return create(CommitWriteResponseSchema, {
        commitIndex: index,
        blob: this.node.state.blobs.get(req.blobId) ?? blob,
      });
    });
  }

  private async remove(req: DirectoryServiceDeleteRequest): Promise<DirectoryServiceDeleteResponse> {
    checkBlobId(req.blobId);
    return this.withBlobLock(req.blobId, async () => {
      if (this.placement.enabled) {
        // A caller that meant a per-blob record has a map that lags: it must delete by group.
        if (req.perBlob) throw PlacementHandlers.perBlobRefused('Delete');
        return this.placement.deleteExtras(req.blobId);
      }
      this.pending.delete(req.blobId);
      if (!this.node.state.active(req.blobId)) {
        return create(DirectoryServiceDeleteResponseSchema, {
          commitIndex: this.node.commitIndex,
          found: false,
        });
      }
      const index = await this.node.propose({ case: 'blobDeleted', value: { blobId: req.blobId } });
      return create(DirectoryServiceDeleteResponseSchema, { commitIndex: index, found: true });
    });
  }

  private async updateReplicas(req: UpdateReplicasRequest): Promise<UpdateReplicasResponse> {
    checkBlobId(req.blobId);
    for (const r of req.add) {
      if (!this.node.state.stores.has(r.storeId)) {
        throw new ConnectError(`cannot add a replica on unknown store ${r.storeId}`, Code.InvalidArgument);
      }
    }
    if (req.targetReplicaCount > 16) {
      throw new ConnectError(
        `target_replica_count ${req.targetReplicaCount} is above 16`,
        Code.InvalidArgument,
      );
    }
    return this.withBlobLock(req.blobId, async () => {
      if (this.placement.enabled) return this.placement.updateExtras(req);
      const blob = this.node.state.blobs.get(req.blobId);
      if (!blob) throw new NotFoundError(`blob ${req.blobId} not found`);
      if (blob.state === BlobState.DELETED && (req.add.length > 0 || req.targetReplicaCount > 0)) {
        throw new TombstonesPendingError(
          `blob ${req.blobId} is deleted: only removing replicas (pending tombstones) is allowed`,
        );
      }
      if (req.expectedVersion !== 0n && blob.version !== req.expectedVersion) {
        throw new VersionMismatchError(
          `blob ${req.blobId} is at version ${blob.version}, not the expected ${req.expectedVersion}`,
        );
      }
      const index = await this.node.propose({
        case: 'replicasChanged',
        value: {
          blobId: req.blobId,
          added: req.add,
          removedStoreIds: req.removeStoreIds,
          targetReplicaCount: req.targetReplicaCount,
        },
      });
      const after =
        this.node.state.blobs.get(req.blobId) ??
        create(BlobMetaSchema, { blobId: req.blobId, state: BlobState.DELETED });
      return create(UpdateReplicasResponseSchema, { commitIndex: index, blob: after });
    });
  }

  private verify(req: VerifyBlobsRequest) {
    // Not from an empty state that only awaits the groups: it would call every needle unreferenced.
    this.placement.requirePerBlob('VerifyBlobs');
    if (req.blobIds.length > MAX_VERIFY) {
      throw new ConnectError(
        `at most ${MAX_VERIFY} ids per call, got ${req.blobIds.length}`,
        Code.InvalidArgument,
      );
    }
    this.expirePending();
    // Allocations are pending in the leader's memory only. For ALLOCATION_TTL after a
    // failover, an upload the previous leader allocated may still commit (its
    // gateway retries CommitWrite here), so an id this directory has never seen
    // could be such an upload's needle: keep it until every inherited allocation
    // has expired. GC waits; no committed blob loses a replica to it.
    const inherited =
      this.node.inheritedLog && performance.now() - this.node.leaderSinceMono < this.node.cfg.allocationTtlMs;
    const referenced = req.blobIds.filter((id) => {
      const b = this.node.state.blobs.get(id);
      if (b === undefined) return inherited || this.pending.has(id);
      if (b.state === BlobState.ACTIVE && b.replicas.some((r) => r.storeId === req.storeId)) return true;
      // An allocation in flight may land on any store: keep it.
      return this.pending.has(id);
    });
    return create(VerifyBlobsResponseSchema, { referencedBlobIds: referenced });
  }

  // ------------------------------------------------------------ reads

  private async locate(req: LocateRequest, ctx: HandlerContext): Promise<LocateResponse> {
    if (req.blobIds.length > MAX_LOCATE) {
      throw new ConnectError(
        `at most ${MAX_LOCATE} ids per call, got ${req.blobIds.length}`,
        Code.InvalidArgument,
      );
    }
    for (const id of req.blobIds) checkBlobId(id);
    if (this.placement.enabled) throw PlacementHandlers.perBlobRefused('Locate');
    if (req.minIndex > this.node.state.appliedIndex) {
      const ok = await this.node.waitApplied(req.minIndex, this.node.cfg.readIndexWaitMs);
      if (!ok) {
        if (this.node.role === 'leader' || ctx.requestHeader.get(FORWARDED_HEADER)) {
          throw new UnavailableError(
            `index ${req.minIndex} is not applied on ${this.node.id} (applied ${this.node.state.appliedIndex}); retry`,
          );
        }
        const leader = this.node.leader();
        if (!leader)
          throw new UnavailableError(`index ${req.minIndex} not applied here and no leader is known`);
        const res = await this.node.client(leader.address).locate(req, {
          headers: { [FORWARDED_HEADER]: this.node.id },
          timeoutMs: ctx.timeoutMs() ?? 10_000,
        });
        ctx.responseHeader.set(LEADER_ADDRESS_HEADER, leader.address);
        return res;
      }
    }
    // Again after the wait: the groups may have been applied meanwhile, or may be due.
    this.placement.requirePerBlob('Locate');
    const state = this.node.state;
    const leading = this.node.isServingLeader();
    const locations = req.blobIds.map((id) => {
      const blob = state.active(id);
      if (!blob) return create(BlobLocationSchema, { blobId: id, found: false });
      const known = blob.replicas.flatMap((r) => {
        const rec = state.stores.get(r.storeId);
        if (!rec) return [];
        const health = leading ? this.stores.currentHealth(r.storeId) : rec.health;
        return [{ r, rec, health }];
      });
      const replicas = readOrder(known).map((x) => ({
        storeId: x.r.storeId,
        address: x.rec.address,
        volumeId: x.r.volumeId,
        health: x.health,
        zone: x.rec.zone,
      }));
      return create(BlobLocationSchema, { blobId: id, found: true, blob, replicas });
    });
    return create(LocateResponseSchema, { locations, appliedIndex: state.appliedIndex });
  }

  private list(req: DirectoryServiceListRequest) {
    const size = req.pageSize === 0 ? 100 : Math.min(req.pageSize, 1000);
    if (req.pageToken && validateBlobId(req.pageToken) !== null) {
      throw new ConnectError('page_token is not one this service issued', Code.InvalidArgument);
    }
    if (req.prefix && !/^[A-Za-z0-9._~-]*$/.test(req.prefix)) {
      throw new ConnectError('prefix may only contain letters, digits and . _ ~ -', Code.InvalidArgument);
    }
    this.placement.requirePerBlob('List');
    const page = this.node.state.list(req.prefix, req.pageToken, size);
    const last = page.blobs[page.blobs.length - 1];
    return create(DirectoryServiceListResponseSchema, {
      blobs: page.blobs,
      nextPageToken: page.more && last ? last.blobId : '',
      appliedIndex: this.node.state.appliedIndex,
    });
  }

  private async clusterStatus(req: GetClusterStatusRequest): Promise<GetClusterStatusResponse> {
    const n = this.node;
    const leader = n.leader();
    const self = create(DirectoryInstanceSchema, {
      directoryId: n.id,
      address: n.selfAddress,
      role: n.directoryRole(),
      term: n.currentTerm(),
      commitIndex: n.commitIndex,
      appliedIndex: n.state.appliedIndex,
      reachable: true,
    });
    const directories = [self];
    if (!req.localOnly) {
      const others = await Promise.all(
        n.peerAddresses().map(async (address) => {
          try {
            const res = await n.client(address).getClusterStatus({ localOnly: true }, { timeoutMs: 1000 });
            const d = res.directories[0];
            if (d) return create(DirectoryInstanceSchema, { ...d, address, reachable: true });
          } catch {
            // unreachable
          }
          return create(DirectoryInstanceSchema, {
            directoryId: n.peerIds.get(address) ?? '',
            address,
            role: DirectoryRole.UNSPECIFIED,
            reachable: false,
          });
        }),
      );
      directories.push(...others);
    }
    const leading = n.isServingLeader();
    const stores = [...n.state.stores.values()]
      .sort((a, b) => (a.storeId < b.storeId ? -1 : 1))
      .map((s) => {
        const rec = clone(StoreRecordSchema, s);
        if (leading) {
          rec.health = this.stores.currentHealth(s.storeId);
          this.stores.overlayLive(rec);
        }
        return rec;
      });
    const placement = n.state.placement;
    // With placement groups the directory counts no blob: estimate from the stores' live needles.
    const blobCount = placement.enabled
      ? estimateBlobCount(stores, n.cfg.defaultReplicaCount)
      : n.state.liveBlobs;
    const hist = [
      ...(placement.enabled
        ? placementHistogram(placement.extraHistogram(), blobCount, n.cfg.defaultReplicaCount)
        : n.state.replicaHistogram()),
    ].sort((a, b) => a[0] - b[0]);
    return create(GetClusterStatusResponseSchema, {
      directoryId: n.id,
      leaderId: leader?.id ?? '',
      term: leader?.term ?? n.currentTerm(),
      directories,
      stores,
      blobCount: BigInt(blobCount),
      replicaHistogram: hist.map(([replicas, blobs]) => ({ replicas, blobs: BigInt(blobs) })),
      placementGroupCount: placement.groupCount,
      placementGroups: placement.groups.filter(Boolean),
      extraReplicaBlobs: BigInt(placement.extras.size),
      storeLoads: this.admin.loads(stores),
      tierBytes: tierBytes(stores, placement.groups, n.cfg.defaultReplicaCount, placement.groupCount),
    });
  }
}

function checkBlobId(id: string): void {
  const problem = validateBlobId(id);
  if (problem !== null) throw new ConnectError(problem, Code.InvalidArgument);
}

export type { BlobMeta };
