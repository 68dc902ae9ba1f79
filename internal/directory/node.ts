import type { HandlerContext } from '@connectrpc/connect';
import {
  type AckMetadataRequest,
  type AckMetadataResponse,
  DirectoryRole,
  type GetLogStateRequest,
  type GetLogStateResponse,
  type WatchMetadataRequest,
  type WatchMetadataResponse,
} from '../../gen/haystack/v1/directory_pb.js';
import type { LeaseKeeper } from '../lease/lease-keeper.js';
import { type Clock, type LeaseStore, systemClock } from '../lease/lease-store.js';
import type { Logger } from '../server/logger.js';
import type { DirectoryConfig } from './config.js';
import { NotLeaderError, UnavailableError } from './errors.js';
import { Follower } from './follower.js';
import { type Change, LeaderCommit } from './leader-commit.js';
import { createLeaseKeeper, Leadership } from './leadership.js';
import { LogRpc } from './log-rpc.js';
import { LogStore } from './log-store.js';
import { type LeaderInfo, NodeContext, type NodeHooks, type Role } from './node-context.js';
import type { DirectoryClientStub } from './peers.js';
import { Snapshots } from './snapshots.js';
import { MetadataState } from './state-machine.js';

export type { Change } from './leader-commit.js';
export type { NodeHooks, Role } from './node-context.js';

/**
 * One directory instance's replication core, as the rest of the directory sees
 * it: status, `propose` (commit a change through the majority log) and the
 * log's RPCs. The work is done by parts that share one NodeContext, in the
 * manner of etcd's raft node fed by an I/O loop: leadership.ts (lease holder,
 * candidacy, stepping down), leader-commit.ts (append, majority commit, apply),
 * follower.ts (following the leader, acks), log-rpc.ts (GetLogState,
 * AckMetadata, WatchMetadata), snapshots.ts; the pure rules are in log-rules.ts.
 * See docs/directory.md for the safety argument.
 */
export class DirectoryNode {
  private readonly commit: LeaderCommit;
  private readonly follower: Follower;
  private readonly leadership: Leadership;
  private readonly rpc: LogRpc;
  private readonly snapshots: Snapshots;

  private constructor(
    private readonly ctx: NodeContext,
    readonly leaseStore: LeaseStore,
  ) {
    this.commit = new LeaderCommit(ctx);
    this.follower = new Follower(ctx, this.commit, (term, leaderId) =>
      this.leadership.adoptTerm(term, leaderId),
    );
    this.leadership = new Leadership(ctx, this.commit, this.follower);
    this.rpc = new LogRpc(ctx, this.leadership, this.commit, this.follower);
    this.snapshots = new Snapshots(ctx);
  }

  static async create(opts: {
    cfg: DirectoryConfig;
    log: Logger;
    leaseStore: LeaseStore;
    selfAddress: string;
    hooks?: NodeHooks;
    clock?: Clock;
    onFatal: (err: Error) => void;
  }): Promise<DirectoryNode> {
    const store = await LogStore.open(opts.cfg.dataDir, opts.log, opts.onFatal);
    const state = store.snapshot ? MetadataState.fromSnapshot(store.snapshot) : new MetadataState();
    const clock = opts.clock ?? systemClock;
    let ctxRef: NodeContext | undefined;
    const keeper = createLeaseKeeper({
      cfg: opts.cfg,
      leaseStore: opts.leaseStore,
      clock,
      selfAddress: opts.selfAddress,
      log: opts.log,
      mayAcquire: () => performance.now() >= (ctxRef?.acquireAfterMono ?? 0),
    });
    const ctx = new NodeContext(
      opts.cfg,
      opts.log,
      store,
      state,
      keeper,
      opts.selfAddress,
      opts.hooks ?? {},
      clock,
    );
    ctxRef = ctx;
    const node = new DirectoryNode(ctx, opts.leaseStore);
    ctx.commitIndex = state.appliedIndex;
    opts.log.info(
      {
        snapshotIndex: store.snapshot?.index ?? 0n,
        firstIndex: store.firstIndex,
        lastIndex: store.lastIndex,
        lastTerm: store.lastTerm,
        currentTerm: store.currentTerm,
        peers: ctx.peers,
        majority: ctx.majority,
      },
      'metadata log opened',
    );
    return node;
  }

  start(): void {
    this.ctx.keeper.start();
    this.follower.start();
    void this.snapshots.loop();
    void this.follower.ackKeepaliveLoop();
    const quorum = setInterval(() => this.leadership.checkQuorum(), this.ctx.cfg.leaderHeartbeatIntervalMs);
    quorum.unref();
    this.ctx.stopped.signal.addEventListener('abort', () => clearInterval(quorum), { once: true });
  }

  async stop(): Promise<void> {
    this.ctx.stopped.abort();
    this.follower.abortStream();
    this.leadership.stepDown('shutting down');
    await this.ctx.keeper.stop();
    await this.leaseStore.close();
    this.ctx.wakeAll();
    await this.ctx.store.close();
  }

  // ---------------------------------------------------------------- shared state (read-only here)

  get id(): string {
    return this.ctx.id;
  }
  get cfg(): DirectoryConfig {
    return this.ctx.cfg;
  }
  get log(): Logger {
    return this.ctx.log;
  }
  get store(): LogStore {
    return this.ctx.store;
  }
  get keeper(): LeaseKeeper {
    return this.ctx.keeper;
  }
  /** The applied metadata state (replaced when a snapshot is installed: do not keep it across awaits). */
  get state(): MetadataState {
    return this.ctx.state;
  }
  get role(): Role {
    return this.ctx.role;
  }
  /** Term this instance leads in (when leader/candidate). */
  get leadTerm(): bigint {
    return this.ctx.leadTerm;
  }
  get leaderReady(): boolean {
    return this.ctx.leaderReady;
  }
  /** Highest index known committed. */
  get commitIndex(): bigint {
    return this.ctx.commitIndex;
  }
  /** Monotonic time (ms) this instance's current leadership became ready. */
  get leaderSinceMono(): number {
    return this.ctx.leaderSinceMono;
  }
  /** Whether the log held entries of earlier terms when this leader took office. */
  get inheritedLog(): boolean {
    return this.ctx.inheritedLog;
  }
  /** Directory ids of peers as learned from their answers (address → id). */
  get peerIds(): ReadonlyMap<string, string> {
    return this.ctx.peerIds;
  }
  /** Followers' positions for status: id → { durable, at }. */
  get followerSeen(): ReadonlyMap<string, { durable: bigint; atMono: number }> {
    return this.ctx.followerSeen;
  }
  get selfAddress(): string {
    return this.ctx.selfAddress;
  }
  /** A single instance listening on port 0 learns its real address after the server started. */
  set selfAddress(address: string) {
    this.ctx.selfAddress = address;
  }

  // ---------------------------------------------------------------- status

  /** The leader as known here: this instance when it leads. */
  leader(): LeaderInfo | null {
    return this.ctx.leader();
  }

  directoryRole(): DirectoryRole {
    const { ctx } = this;
    if (ctx.role === 'leader' && ctx.leaderReady && ctx.keeper.isValid()) return DirectoryRole.LEADER;
    if (ctx.role === 'follower' && this.follower.target && ctx.leaderInfo) return DirectoryRole.FOLLOWER;
    return DirectoryRole.CANDIDATE;
  }

  /** Highest term known (for status). */
  currentTerm(): bigint {
    return this.ctx.currentTerm();
  }

  peerAddresses(): string[] {
    return [...this.ctx.peers];
  }

  client(address: string): DirectoryClientStub {
    return this.ctx.client(address);
  }

  /** Throws unless this instance may commit now: UnavailableError, or NotLeaderError naming the leader. */
  requireLeader(): void {
    const { ctx } = this;
    if (ctx.role === 'leader') {
      if (!ctx.keeper.isValid()) {
        throw new UnavailableError(
          `directory ${ctx.id} cannot commit: its leader lease could not be renewed in time` +
            (ctx.keeper.lastError ? ` (lease store: ${ctx.keeper.lastError})` : '') +
            '; writes resume when a leader holds a valid lease',
        );
      }
      if (!ctx.leaderReady) {
        throw new UnavailableError(
          `directory ${ctx.id} is taking office as leader (term ${ctx.leadTerm}): retry shortly`,
        );
      }
      return;
    }
    const l = ctx.leaderInfo;
    if (l) throw new NotLeaderError(`directory ${ctx.id} is not the leader`, l);
    throw new UnavailableError(`no directory leader right now (${ctx.describeNoLeader()})`);
  }

  isServingLeader(): boolean {
    const { ctx } = this;
    return ctx.role === 'leader' && ctx.leaderReady && ctx.keeper.isValid();
  }

  describeNoLeader(): string {
    return this.ctx.describeNoLeader();
  }

  // ---------------------------------------------------------------- commands

  /** Stops leading (if it did) and follows whoever leads. */
  stepDown(reason: string): void {
    this.leadership.stepDown(reason);
  }

  /**
   * Appends a change and resolves with its index once a majority holds it on disk
   * (and it is applied here). Only the ready leader with a valid lease may call it.
   */
  async propose(change: Change): Promise<bigint> {
    this.requireLeader();
    const started = performance.now();
    const index = this.commit.appendLocal(change);
    await this.commit.waitCommitted(index, this.ctx.leadTerm);
    this.ctx.hooks.onCommitted?.((performance.now() - started) / 1000);
    return index;
  }

  /** Resolves true once `index` is applied here, false after `timeoutMs`. */
  waitApplied(index: bigint, timeoutMs: number): Promise<boolean> {
    return this.commit.waitApplied(index, timeoutMs);
  }

  /** Saves the applied state and compacts the log behind it. */
  snapshotNow(): Promise<void> {
    return this.snapshots.now();
  }

  // ---------------------------------------------------------------- RPC: replication (log-rpc.ts)

  getLogState(req: GetLogStateRequest): Promise<GetLogStateResponse> {
    return this.rpc.getLogState(req);
  }

  ackMetadata(req: AckMetadataRequest): Promise<AckMetadataResponse> {
    return this.rpc.ackMetadata(req);
  }

  watch(req: WatchMetadataRequest, ctx: HandlerContext): AsyncGenerator<WatchMetadataResponse> {
    return this.rpc.watch(req, ctx);
  }
}
