import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { Code, ConnectError, type HandlerContext } from '@connectrpc/connect';
import {
  type AckMetadataRequest,
  type AckMetadataResponse,
  AckMetadataResponseSchema,
  DirectoryRole,
  type GetLogStateRequest,
  type GetLogStateResponse,
  GetLogStateResponseSchema,
  type WatchMetadataRequest,
  type WatchMetadataResponse,
  WatchMetadataResponseSchema,
} from '../../gen/haystack/v1/directory_pb.js';
import { type LogEntry, LogEntrySchema, type MetadataSnapshot } from '../../gen/haystack/v1/metadata_pb.js';
import { LeaseKeeper } from '../lease/lease-keeper.js';
import { type Clock, type LeaseInfo, type LeaseStore, systemClock } from '../lease/lease-store.js';
import type { Logger } from '../server/logger.js';
import type { DirectoryConfig } from './config.js';
import { LogStore, TruncatedError } from './log-store.js';
import {
  CATCHUP_TERM_HEADER,
  type DirectoryClientStub,
  notLeaderError,
  PeerClients,
  unavailable,
} from './peers.js';
import { MetadataState } from './state-machine.js';

export type Role = 'leader' | 'follower' | 'candidate';
export type Change = NonNullable<MessageInitShape<typeof LogEntrySchema>['change']>;

/** Entries per WatchMetadata message. */
const BATCH = 500;

export interface NodeHooks {
  /** This instance's leadership is ready to serve writes (LeaderChanged committed). */
  onLeaderReady?(term: bigint): void;
  /** This instance stopped leading. */
  onLeaderStop?(reason: string): void;
  /** A committed entry was applied. */
  onApplied?(entry: LogEntry): void;
  /** A change committed on the leader (for metrics): seconds from append to commit. */
  onCommitted?(seconds: number): void;
}

interface CommitWaiter {
  index: bigint;
  term: bigint;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * One directory instance's replication core: the Redis lease (who may lead, with
 * a fencing term), the replicated metadata log (majority commit), catch-up of a
 * new leader, and following the leader. See docs/directory.md for the argument.
 */
export class DirectoryNode {
  role: Role = 'follower';
  /** Term this instance leads in (when leader/candidate). */
  leadTerm = 0n;
  leaderReady = false;
  /** Highest index known committed. */
  commitIndex = 0n;
  /** Monotonic time this instance's current leadership became ready. */
  leaderSinceMono = 0;
  /**
   * Whether the log held entries of earlier terms when this leader took office:
   * then an earlier leader may have handed out allocations whose in-memory
   * pending records died with it.
   */
  inheritedLog = false;
  /** Why writes are refused right now (for messages). */
  private notLeadingReason = 'no leader elected yet';
  /** The leader as this instance knows it. */
  private leaderInfo: { id: string; address: string; term: bigint } | null = null;
  private readonly peers: string[];
  private readonly majority: number;
  private readonly clients = new PeerClients();
  /** Follower acks: directory id → durable index (leader only, this term). */
  private readonly matchIndex = new Map<string, bigint>();
  private commitWaiters: CommitWaiter[] = [];
  private applyWaiters: { index: bigint; resolve: () => void }[] = [];
  /** Woken when entries are appended, the commit advances or the role changes. */
  private changeWaiters = new Set<() => void>();
  /** Bumped on every role change; async flows started under an older epoch give up. */
  private epoch = 0;
  private followCtl: AbortController | null = null;
  private followTarget: string | null = null;
  private readonly stopped = new AbortController();
  private snapshotting = false;
  /** Directory ids of peers as learned from their answers (address → id). */
  readonly peerIds = new Map<string, string>();
  /** Followers' positions for status: id → { durable, at }. */
  readonly followerSeen = new Map<string, { durable: bigint; atMono: number }>();
  readonly keeper: LeaseKeeper;
  private readonly clock: Clock;

  private constructor(
    readonly cfg: DirectoryConfig,
    readonly log: Logger,
    readonly store: LogStore,
    public state: MetadataState,
    readonly leaseStore: LeaseStore,
    readonly selfAddress: string,
    private readonly hooks: NodeHooks,
    clock: Clock,
  ) {
    this.clock = clock;
    const peers = cfg.peers.length > 0 ? [...cfg.peers] : [selfAddress];
    if (!peers.includes(selfAddress)) peers.push(selfAddress);
    this.peers = peers.filter((p) => p !== selfAddress);
    this.majority = Math.floor(peers.length / 2) + 1;
    const memoryLease = cfg.redisUrl === '';
    const staticLeader = cfg.peers[0] ?? selfAddress;
    const margin = Math.min(1000, Math.max(50, Math.round(cfg.leaderTimeoutMs / 5)));
    this.keeper = new LeaseKeeper({
      store: leaseStore,
      clock,
      key: cfg.leaseKey,
      holder: `${cfg.directoryId}|${selfAddress}`,
      ttlMs: cfg.leaderTimeoutMs,
      renewIntervalMs: cfg.leaderHeartbeatIntervalMs,
      retryIntervalMs: Math.max(
        25,
        Math.min(cfg.leaderHeartbeatIntervalMs, Math.round(cfg.leaderTimeoutMs / 10)),
      ),
      safetyMarginMs: margin,
      // An in-process lease cannot see other processes: only one instance may ever lead.
      mayAcquire: () => !memoryLease || staticLeader === selfAddress,
      onError: (op, err) =>
        log.debug({ op, err: err instanceof Error ? err.message : String(err) }, 'lease store call failed'),
    });
    if (memoryLease && staticLeader !== selfAddress) {
      // Nobody else can see an in-process lease: follow the one instance that leads.
      this.leaderInfo = { id: staticLeader, address: staticLeader, term: 0n };
    }
    this.keeper.observeTerm(store.currentTerm);
    this.keeper.observeTerm(store.lastTerm);
    this.keeper.on((e) => {
      if (e.type === 'acquired') void this.runCandidacy(e.term);
      else if (e.type === 'lost') this.stepDown(`lost the leader lease: ${e.reason}`);
      else this.onHolder(e.current);
    });
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
    const node = new DirectoryNode(
      opts.cfg,
      opts.log,
      store,
      state,
      opts.leaseStore,
      opts.selfAddress,
      opts.hooks ?? {},
      opts.clock ?? systemClock,
    );
    node.commitIndex = state.appliedIndex;
    opts.log.info(
      {
        snapshotIndex: store.snapshot?.index ?? 0n,
        firstIndex: store.firstIndex,
        lastIndex: store.lastIndex,
        lastTerm: store.lastTerm,
        currentTerm: store.currentTerm,
        peers: node.peers,
        majority: node.majority,
      },
      'metadata log opened',
    );
    return node;
  }

  get id(): string {
    return this.cfg.directoryId;
  }

  start(): void {
    this.keeper.start();
    this.startFollowing();
    void this.snapshotLoop();
    void this.ackKeepaliveLoop();
  }

  async stop(): Promise<void> {
    this.stopped.abort();
    this.followCtl?.abort();
    this.stepDown('shutting down');
    await this.keeper.stop();
    await this.leaseStore.close();
    this.wakeAll();
    await this.store.close();
  }

  // ---------------------------------------------------------------- status

  /** The leader as known here: this instance when it leads. */
  leader(): { id: string; address: string; term: bigint } | null {
    if (this.role === 'leader') return { id: this.id, address: this.selfAddress, term: this.leadTerm };
    return this.leaderInfo;
  }

  directoryRole(): DirectoryRole {
    if (this.role === 'leader' && this.leaderReady && this.keeper.isValid()) return DirectoryRole.LEADER;
    if (this.role === 'follower' && this.followTarget && this.leaderInfo) return DirectoryRole.FOLLOWER;
    return DirectoryRole.CANDIDATE;
  }

  /** Highest term known (for status). */
  currentTerm(): bigint {
    const t = this.store.currentTerm;
    return maxBig(this.keeper.knownTerm, t);
  }

  peerAddresses(): string[] {
    return [...this.peers];
  }

  client(address: string): DirectoryClientStub {
    return this.clients.get(address);
  }

  /** Throws unless this instance may commit now: UNAVAILABLE or FAILED_PRECONDITION with the leader. */
  requireLeader(): void {
    if (this.role === 'leader') {
      if (!this.keeper.isValid()) {
        throw unavailable(
          `directory ${this.id} cannot commit: its leader lease could not be renewed in time` +
            (this.keeper.lastError ? ` (lease store: ${this.keeper.lastError})` : '') +
            '; writes resume when a leader holds a valid lease',
        );
      }
      if (!this.leaderReady) {
        throw unavailable(
          `directory ${this.id} is taking office as leader (term ${this.leadTerm}): retry shortly`,
        );
      }
      return;
    }
    const l = this.leaderInfo;
    if (l) throw notLeaderError(Code.FailedPrecondition, `directory ${this.id} is not the leader`, l);
    throw unavailable(`no directory leader right now (${this.describeNoLeader()})`);
  }

  isServingLeader(): boolean {
    return this.role === 'leader' && this.leaderReady && this.keeper.isValid();
  }

  describeNoLeader(): string {
    if (this.keeper.lastError) return `lease store unreachable: ${this.keeper.lastError}`;
    return this.notLeadingReason;
  }

  // ---------------------------------------------------------------- leadership

  private onHolder(cur: LeaseInfo | null): void {
    if (!cur) return;
    const [id, address] = splitHolder(cur.holder);
    if (!id || !address || address === this.selfAddress) return;
    if (this.leaderInfo?.address !== address || this.leaderInfo.term !== cur.term) {
      this.leaderInfo = { id, address, term: cur.term };
      this.log.info({ leader: id, address, term: cur.term }, 'leader lease holder');
      if (this.role === 'follower') this.startFollowing();
    }
  }

  private async runCandidacy(term: bigint): Promise<void> {
    const epoch = ++this.epoch;
    const t0 = performance.now();
    this.role = 'candidate';
    this.leadTerm = term;
    this.leaderReady = false;
    this.leaderInfo = null;
    this.followCtl?.abort();
    this.followCtl = null;
    this.followTarget = null;
    this.notLeadingReason = `directory ${this.id} is taking office (term ${term})`;
    this.log.info({ term }, 'won the leader lease: catching up before serving writes');
    try {
      await this.store.setCurrentTerm(term, this.id);
      // Gather log positions from a majority; each one that answers promises to
      // refuse lower terms from now on (like a Raft vote).
      const states = await Promise.all(
        this.peers.map(async (address) => {
          try {
            const res = await this.client(address).getLogState(
              { term, candidateId: this.id, candidateAddress: this.selfAddress },
              { timeoutMs: Math.max(300, Math.round(this.cfg.leaderTimeoutMs / 3)) },
            );
            this.peerIds.set(address, res.directoryId);
            return { address, res };
          } catch (err) {
            const ce = ConnectError.from(err);
            const m = /current term (\d+)/.exec(ce.rawMessage);
            if (m?.[1]) this.keeper.observeTerm(BigInt(m[1]));
            this.log.debug({ peer: address, err: ce.message }, 'GetLogState failed');
            return null;
          }
        }),
      );
      if (epoch !== this.epoch) return;
      const answered = states.filter((s): s is NonNullable<typeof s> => s !== null);
      for (const s of answered) this.keeper.observeTerm(s.res.currentTerm);
      if (this.keeper.knownTerm > term) {
        await this.abandon(epoch, `a peer has seen term ${this.keeper.knownTerm} > ${term}`);
        return;
      }
      if (answered.length + 1 < this.majority) {
        await this.abandon(
          epoch,
          `only ${answered.length + 1} of ${this.peers.length + 1} directory instances answered (need ${this.majority})`,
        );
        return;
      }
      let best: { address: string; lastIndex: bigint; lastTerm: bigint } | null = null;
      for (const s of answered) {
        if (
          s.res.lastTerm > this.store.lastTerm ||
          (s.res.lastTerm === this.store.lastTerm && s.res.lastIndex > this.store.lastIndex)
        ) {
          if (
            !best ||
            s.res.lastTerm > best.lastTerm ||
            (s.res.lastTerm === best.lastTerm && s.res.lastIndex > best.lastIndex)
          ) {
            best = { address: s.address, lastIndex: s.res.lastIndex, lastTerm: s.res.lastTerm };
          }
        }
      }
      if (best) {
        this.log.info(
          { from: best.address, to: best.lastIndex },
          'fetching missing entries from the most advanced peer',
        );
        await this.catchUpFrom(best.address, best.lastIndex, best.lastTerm, term, epoch);
        if (epoch !== this.epoch) return;
      }
      if (!this.keeper.isValid() || this.keeper.heldTerm !== term) {
        await this.abandon(epoch, 'lease lost while catching up');
        return;
      }
      // Take office: the first entry of the term. Everything before it commits with it.
      this.role = 'leader';
      this.matchIndex.clear();
      for (const s of answered) this.matchIndex.set(s.res.directoryId, 0n);
      const index = this.appendLocal({ case: 'leaderChanged', value: { leaderId: this.id } });
      this.inheritedLog = index > 1n;
      await this.waitCommitted(index, term);
      if (epoch !== this.epoch) return;
      this.leaderReady = true;
      this.leaderSinceMono = performance.now();
      this.notLeadingReason = '';
      this.log.info(
        { term, index, ms: Math.round(performance.now() - t0), commitIndex: this.commitIndex },
        'leader ready: serving writes',
      );
      this.hooks.onLeaderReady?.(term);
      this.wakeAll();
    } catch (err) {
      if (epoch !== this.epoch) return;
      await this.abandon(epoch, `taking office failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private async abandon(epoch: number, reason: string): Promise<void> {
    if (epoch !== this.epoch) return;
    this.log.warn({ reason }, 'giving up the leader lease');
    // Releasing emits 'lost', which steps down; without a lease, step down directly.
    if (this.keeper.heldTerm !== null) await this.keeper.relinquish(reason);
    else this.stepDown(reason);
  }

  /** Fetches a peer's raw log until ours holds its entry (lastIndex, lastTerm). */
  private async catchUpFrom(
    address: string,
    lastIndex: bigint,
    lastTerm: bigint,
    term: bigint,
    epoch: number,
  ): Promise<void> {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), Math.max(2000, this.cfg.leaderTimeoutMs));
    try {
      const from = this.commitIndex + 1n;
      const stream = this.client(address).watchMetadata(
        { fromIndex: from, watcherId: `directory:${this.id}`, includeUncommitted: true },
        { signal: ctl.signal, headers: { [CATCHUP_TERM_HEADER]: term.toString() } },
      );
      const session = { match: from - 1n };
      for await (const msg of stream) {
        if (epoch !== this.epoch) return;
        await this.absorb(msg, session, false);
        if (this.store.lastIndex >= lastIndex && this.store.termAt(lastIndex) === lastTerm) break;
      }
      if (this.store.termAt(lastIndex) !== lastTerm) {
        throw new Error(`catch-up from ${address} ended before index ${lastIndex}`);
      }
      await this.store.waitDurable(this.store.lastIndex);
    } finally {
      clearTimeout(timer);
      ctl.abort();
    }
  }

  /** Stops leading (if it did) and follows whoever leads. */
  stepDown(reason: string): void {
    const wasLeading = this.role !== 'follower';
    this.epoch++;
    if (wasLeading) {
      this.log.warn({ term: this.leadTerm, reason }, 'stepping down');
      this.hooks.onLeaderStop?.(reason);
    }
    this.role = 'follower';
    this.leaderReady = false;
    this.notLeadingReason = reason;
    const err = unavailable(
      `directory ${this.id} stopped leading before the change was acknowledged (${reason}); ` +
        'it may or may not have been committed: retry (commits are idempotent)',
    );
    const waiters = this.commitWaiters;
    this.commitWaiters = [];
    for (const w of waiters) w.reject(err);
    this.matchIndex.clear();
    this.wakeAll();
    // A follower must not sit on the lease (it would block every other candidate).
    if (this.keeper.heldTerm !== null) void this.keeper.relinquish(reason);
    if (!this.stopped.signal.aborted) this.startFollowing();
  }

  /** Raises the term this instance follows (persisted first); steps down if it led an older one. */
  private async adoptTerm(term: bigint, leaderId = ''): Promise<void> {
    this.keeper.observeTerm(term);
    await this.store.setCurrentTerm(term, leaderId);
    if (this.role !== 'follower' && term > this.leadTerm) {
      await this.keeper.relinquish(`saw term ${term}`);
      this.stepDown(`a newer term ${term} exists`);
    }
  }

  // ---------------------------------------------------------------- leader: append and commit

  private appendLocal(change: Change): bigint {
    const index = this.store.lastIndex + 1n;
    const entry = create(LogEntrySchema, {
      index,
      term: this.leadTerm,
      timestampMs: BigInt(this.clock.wallMs()),
      change,
    });
    this.store.append([entry]);
    void this.store.waitDurable(index).then(
      () => this.recomputeCommit(),
      () => {},
    );
    this.wakeAll();
    return index;
  }

  /**
   * Appends a change and resolves with its index once a majority holds it on disk
   * (and it is applied here). Only the ready leader with a valid lease may call it.
   */
  async propose(change: Change): Promise<bigint> {
    this.requireLeader();
    const started = performance.now();
    const index = this.appendLocal(change);
    await this.waitCommitted(index, this.leadTerm);
    this.hooks.onCommitted?.((performance.now() - started) / 1000);
    return index;
  }

  private waitCommitted(index: bigint, term: bigint): Promise<void> {
    if (this.commitIndex >= index && this.state.appliedIndex >= index) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.commitWaiters.push({ index, term, resolve, reject });
    });
  }

  /** Leader: the highest index a majority holds durably, if it is of this term and the lease is valid. */
  private recomputeCommit(): void {
    if (this.role !== 'leader') return;
    const positions = [this.store.durableIndex, ...this.matchIndex.values()].sort((a, b) =>
      a > b ? -1 : a < b ? 1 : 0,
    );
    const candidate = positions[this.majority - 1];
    if (candidate === undefined || candidate <= this.commitIndex) return;
    // Raft's rule: only entries of the current term commit by counting replicas.
    if (this.store.termAt(candidate) !== this.leadTerm) return;
    // Never acknowledge once the lease's local validity ran out (another leader may exist).
    if (!this.keeper.isValid()) return;
    this.commitIndex = candidate;
    this.applyCommitted();
    this.wakeAll();
  }

  private applyCommitted(): void {
    const upTo = minBig(this.commitIndex, this.store.lastIndex);
    while (this.state.appliedIndex < upTo) {
      const e = this.store.entry(this.state.appliedIndex + 1n);
      if (!e) break;
      this.state.apply(e);
      this.hooks.onApplied?.(e);
    }
    const applied = this.state.appliedIndex;
    if (this.commitWaiters.length > 0) {
      const done = this.commitWaiters.filter((w) => w.index <= applied);
      this.commitWaiters = this.commitWaiters.filter((w) => w.index > applied);
      for (const w of done) {
        if (this.store.termAt(w.index) === w.term) w.resolve();
        else w.reject(unavailable(`log entry ${w.index} was replaced by another leader's entry: retry`));
      }
    }
    if (this.applyWaiters.length > 0) {
      const ready = this.applyWaiters.filter((w) => w.index <= applied);
      this.applyWaiters = this.applyWaiters.filter((w) => w.index > applied);
      for (const w of ready) w.resolve();
    }
  }

  /** Resolves true once `index` is applied here, false after `timeoutMs`. */
  waitApplied(index: bigint, timeoutMs: number): Promise<boolean> {
    if (this.state.appliedIndex >= index) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = { index, resolve: () => resolve(true) };
      this.applyWaiters.push(w);
      setTimeout(() => {
        this.applyWaiters = this.applyWaiters.filter((x) => x !== w);
        resolve(this.state.appliedIndex >= index);
      }, timeoutMs).unref();
    });
  }

  // ---------------------------------------------------------------- RPC: replication

  /** GetLogState: a plain query (term 0) or a candidate's request (a promise to refuse lower terms). */
  async getLogState(req: GetLogStateRequest): Promise<GetLogStateResponse> {
    if (req.term > 0n) {
      if (req.term < this.currentTerm()) {
        throw new ConnectError(
          `candidate term ${req.term} is stale: current term ${this.currentTerm()}`,
          Code.FailedPrecondition,
        );
      }
      const voted = this.store.votedFor;
      if (req.term === this.store.currentTerm && voted !== '' && voted !== req.candidateId) {
        // Two candidates with one term (only after the lease store lost its counter twice).
        throw new ConnectError(
          `term ${req.term} already belongs to ${voted}: current term ${req.term}`,
          Code.FailedPrecondition,
        );
      }
      await this.adoptTerm(req.term, req.candidateId);
      if (req.candidateAddress && req.candidateAddress !== this.selfAddress) {
        if (req.candidateId) this.peerIds.set(req.candidateAddress, req.candidateId);
        this.leaderInfo = { id: req.candidateId, address: req.candidateAddress, term: req.term };
        if (this.role === 'follower') this.startFollowing();
      }
    }
    return create(GetLogStateResponseSchema, {
      directoryId: this.id,
      lastIndex: this.store.lastIndex,
      lastTerm: this.store.lastTerm,
      commitIndex: this.commitIndex,
      currentTerm: this.currentTerm(),
    });
  }

  /** AckMetadata: a follower's durable position in this leader's log. */
  async ackMetadata(req: AckMetadataRequest): Promise<AckMetadataResponse> {
    if (req.term > this.leadTerm) await this.adoptTerm(req.term);
    if (this.role !== 'leader' || req.term !== this.leadTerm) {
      throw notLeaderError(
        Code.FailedPrecondition,
        `directory ${this.id} is not the leader of term ${req.term}`,
        this.leader(),
      );
    }
    const capped = minBig(req.durableIndex, this.store.lastIndex);
    const prev = this.matchIndex.get(req.directoryId) ?? 0n;
    if (capped > prev) this.matchIndex.set(req.directoryId, capped);
    this.followerSeen.set(req.directoryId, { durable: capped, atMono: performance.now() });
    this.recomputeCommit();
    return create(AckMetadataResponseSchema, { commitIndex: this.commitIndex });
  }

  /**
   * WatchMetadata. Directory followers (include_uncommitted) are served by the
   * leader only; a candidate catching up (CATCHUP_TERM_HEADER) gets this
   * instance's raw log; other watchers get committed entries from any instance.
   */
  async *watch(req: WatchMetadataRequest, ctx: HandlerContext): AsyncGenerator<WatchMetadataResponse> {
    const catchupTerm = BigInt(ctx.requestHeader.get(CATCHUP_TERM_HEADER) ?? '0');
    const raw = req.includeUncommitted;
    if (raw && catchupTerm === 0n && this.role !== 'leader') {
      const l = this.leader();
      if (l) throw notLeaderError(Code.FailedPrecondition, `directory ${this.id} is not the leader`, l);
      throw unavailable(`no directory leader right now (${this.describeNoLeader()})`);
    }
    if (catchupTerm > 0n && catchupTerm < this.currentTerm()) {
      throw new ConnectError(`catch-up term ${catchupTerm} is stale`, Code.FailedPrecondition);
    }
    const epoch = this.epoch;
    const asLeader = raw && catchupTerm === 0n;
    const term = () => (asLeader ? this.leadTerm : this.store.lastTerm);
    const limit = () => (raw ? this.store.lastIndex : this.state.appliedIndex);
    let next = req.fromIndex === 0n ? 0n : req.fromIndex;
    let sentCommit = -1n;
    const signal = ctx.signal;
    while (!signal.aborted && !this.stopped.signal.aborted) {
      if (asLeader && (this.epoch !== epoch || this.role !== 'leader')) return;
      if (next === 0n || next < this.store.firstIndex) {
        const snap = this.snapshotForTransfer(raw);
        if (snap) {
          yield create(WatchMetadataResponseSchema, {
            term: term(),
            commitIndex: this.commitIndex,
            msg: { case: 'snapshot', value: snap },
          });
          next = snap.index + 1n;
          continue;
        }
        next = this.store.firstIndex;
      }
      if (next > this.store.lastIndex + 1n) next = this.store.lastIndex + 1n;
      const lim = limit();
      if (next <= lim) {
        const n = Number(lim - next + 1n);
        const entries = this.store.slice(next, Math.min(BATCH, n));
        next += BigInt(entries.length);
        sentCommit = this.commitIndex;
        yield create(WatchMetadataResponseSchema, {
          term: term(),
          commitIndex: this.commitIndex,
          msg: { case: 'entries', value: { entries } },
        });
        continue;
      }
      if (this.commitIndex !== sentCommit) {
        sentCommit = this.commitIndex;
        yield create(WatchMetadataResponseSchema, {
          term: term(),
          commitIndex: this.commitIndex,
          msg: { case: 'entries', value: { entries: [] } },
        });
        continue;
      }
      await this.waitChange(signal, 1000);
    }
  }

  /** The snapshot to send: the saved one, or (for committed-only watchers) the live state. */
  private snapshotForTransfer(raw: boolean): MetadataSnapshot | null {
    if (this.store.snapshot && this.store.snapshot.index >= this.store.firstIndex - 1n)
      return this.store.snapshot;
    if (!raw) return this.state.toSnapshot();
    return this.store.snapshot;
  }

  private waitChange(signal: AbortSignal, timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.changeWaiters.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      const t = setTimeout(done, timeoutMs);
      this.changeWaiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  private wakeAll(): void {
    const ws = [...this.changeWaiters];
    this.changeWaiters.clear();
    for (const w of ws) w();
  }

  // ---------------------------------------------------------------- follower

  private startFollowing(): void {
    if (this.role !== 'follower' || this.stopped.signal.aborted) return;
    const target = this.leaderInfo?.address ?? null;
    if (target === this.followTarget && this.followCtl && !this.followCtl.signal.aborted) return;
    this.followCtl?.abort();
    this.followTarget = target;
    if (!target) {
      this.followCtl = null;
      return;
    }
    const ctl = new AbortController();
    this.followCtl = ctl;
    void this.followLoop(target, ctl.signal);
  }

  private async followLoop(address: string, signal: AbortSignal): Promise<void> {
    let backoff = 20;
    while (!signal.aborted && this.role === 'follower') {
      const session = { match: 0n };
      try {
        const from = this.commitIndex + 1n;
        session.match = from - 1n;
        const stream = this.client(address).watchMetadata(
          { fromIndex: from, watcherId: `directory:${this.id}`, includeUncommitted: true },
          { signal },
        );
        for await (const msg of stream) {
          if (this.role !== 'follower') return;
          if (!(await this.absorb(msg, session, true))) break;
          backoff = 20;
          this.scheduleAck(address, msg.term, session);
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof TruncatedError) continue;
        const ce = ConnectError.from(err);
        this.log.debug({ leader: address, err: ce.message }, 'follow stream ended');
      }
      if (signal.aborted) return;
      await systemClock.sleep(backoff, signal);
      backoff = Math.min(backoff * 2, 500);
      this.keeper.poke();
    }
  }

  /**
   * Takes one WatchMetadata message into the log: log matching by (index, term),
   * truncating a conflicting suffix. Returns false when the stream must be dropped
   * (an older term than promised, or a gap).
   */
  private async absorb(
    msg: WatchMetadataResponse,
    session: { match: bigint },
    following: boolean,
  ): Promise<boolean> {
    if (msg.term < this.store.currentTerm && following) {
      this.log.info(
        { streamTerm: msg.term, currentTerm: this.store.currentTerm },
        'dropping a stream of an older term',
      );
      return false;
    }
    if (following && msg.term > this.store.currentTerm)
      await this.adoptTerm(msg.term, this.leaderInfo?.id ?? '');
    if (msg.msg.case === 'snapshot') {
      const snap = msg.msg.value;
      if (snap.index > this.state.appliedIndex) {
        this.log.info(
          { index: snap.index, blobs: snap.blobs.length },
          'installing a snapshot from the leader',
        );
        await this.store.installSnapshot(snap);
        this.state = MetadataState.fromSnapshot(snap);
        if (snap.index > this.commitIndex) this.commitIndex = snap.index;
      }
      session.match = snap.index;
      this.wakeAll();
      return true;
    }
    if (msg.msg.case === 'entries') {
      for (const e of msg.msg.value.entries) {
        if (e.index <= this.store.firstIndex - 1n) {
          // Compacted here: committed, hence the same on every leader.
        } else if (e.index <= this.store.lastIndex) {
          if (this.store.termAt(e.index) !== e.term) {
            if (e.index <= this.commitIndex) {
              throw new Error(
                `leader sent entry ${e.index} of term ${e.term} conflicting with a committed entry`,
              );
            }
            this.log.info(
              { from: e.index, lastIndex: this.store.lastIndex },
              'truncating a conflicting suffix',
            );
            await this.store.truncateFrom(e.index);
            this.store.append([e]);
          }
        } else if (e.index === this.store.lastIndex + 1n) {
          this.store.append([e]);
        } else {
          this.log.warn(
            { got: e.index, lastIndex: this.store.lastIndex },
            'gap in the leader stream: reconnecting',
          );
          return false;
        }
        session.match = e.index;
      }
      if (following) {
        const c = minBig(msg.commitIndex, session.match);
        if (c > this.commitIndex) {
          this.commitIndex = c;
          this.applyCommitted();
        }
      }
      this.wakeAll();
    }
    return true;
  }

  private ackState: {
    inFlight: boolean;
    again: boolean;
    last: bigint;
    address: string;
    term: bigint;
    session: { match: bigint };
  } | null = null;

  /** Reports min(durable, matched) to the leader once it is fsync'd (coalesced). */
  private scheduleAck(address: string, term: bigint, session: { match: bigint }): void {
    const st = this.ackState;
    if (st && st.address === address && st.term === term) {
      st.session = session;
      if (st.inFlight) {
        st.again = true;
        return;
      }
    } else {
      this.ackState = { inFlight: false, again: false, last: -1n, address, term, session };
    }
    void this.sendAck();
  }

  private async sendAck(force = false): Promise<void> {
    const st = this.ackState;
    if (!st || st.inFlight) return;
    st.inFlight = true;
    try {
      do {
        st.again = false;
        const target = st.session.match;
        await this.store.waitDurable(minBig(target, this.store.lastIndex)).catch(() => {});
        const durable = minBig(this.store.durableIndex, st.session.match);
        // Never acknowledge for a term this instance has promised to leave behind: the
        // durable index is computed in the same tick as this check, so every entry it
        // covers was in the log a newer candidate was told about.
        if (st.term < this.store.currentTerm) return;
        if (durable === st.last && !force) continue;
        force = false;
        const res = await this.client(st.address).ackMetadata(
          { directoryId: this.id, term: st.term, durableIndex: durable },
          { timeoutMs: 2000 },
        );
        st.last = durable;
        const c = minBig(res.commitIndex, st.session.match);
        if (c > this.commitIndex && this.role === 'follower') {
          this.commitIndex = c;
          this.applyCommitted();
        }
      } while (st.again);
    } catch (err) {
      this.log.debug({ err: ConnectError.from(err).message }, 'ack failed');
    } finally {
      st.inFlight = false;
    }
  }

  private async ackKeepaliveLoop(): Promise<void> {
    while (!this.stopped.signal.aborted) {
      await systemClock.sleep(this.cfg.followerSyncIntervalMs, this.stopped.signal);
      if (this.role === 'follower' && this.ackState) void this.sendAck(true);
    }
  }

  // ---------------------------------------------------------------- snapshots

  private async snapshotLoop(): Promise<void> {
    while (!this.stopped.signal.aborted) {
      await systemClock.sleep(this.cfg.snapshotIntervalMs, this.stopped.signal);
      if (this.stopped.signal.aborted) return;
      await this.snapshotNow().catch((err: unknown) => this.log.error({ err }, 'snapshot failed'));
    }
  }

  /** Saves the applied state and compacts the log behind it. */
  async snapshotNow(): Promise<void> {
    if (this.snapshotting) return;
    const snapIndex = this.store.snapshot?.index ?? 0n;
    if (this.state.appliedIndex <= snapIndex) return;
    this.snapshotting = true;
    try {
      const snap = this.state.toSnapshot();
      const t0 = performance.now();
      await this.store.saveSnapshot(snap, this.cfg.logRetainEntries);
      this.log.info(
        {
          index: snap.index,
          blobs: snap.blobs.length,
          firstIndex: this.store.firstIndex,
          ms: Math.round(performance.now() - t0),
        },
        'snapshot saved',
      );
    } finally {
      this.snapshotting = false;
    }
  }
}

function splitHolder(holder: string): [string, string] {
  const bar = holder.indexOf('|');
  return bar < 0 ? [holder, ''] : [holder.slice(0, bar), holder.slice(bar + 1)];
}

function minBig(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

function maxBig(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}
