import { create } from '@bufbuild/protobuf';
import type { HandlerContext } from '@connectrpc/connect';
import {
  type AckMetadataRequest,
  type AckMetadataResponse,
  AckMetadataResponseSchema,
  type GetLogStateRequest,
  type GetLogStateResponse,
  GetLogStateResponseSchema,
  type WatchMetadataRequest,
  type WatchMetadataResponse,
  WatchMetadataResponseSchema,
} from '../../gen/haystack/v1/directory_pb.js';
import type { MetadataSnapshot } from '../../gen/haystack/v1/metadata_pb.js';
import { NotLeaderError, StaleTermError, UnavailableError } from './errors.js';
import type { Follower } from './follower.js';
import type { LeaderCommit } from './leader-commit.js';
import type { Leadership } from './leadership.js';
import type { NodeContext } from './node-context.js';
import { CATCHUP_TERM_HEADER } from './peers.js';
import { watchKeepaliveMs } from './watch-liveness.js';

/** Entries per WatchMetadata message. */
const BATCH = 500;

/**
 * The log's server side of DirectoryService: GetLogState (a candidate's vote
 * request, or a plain query), AckMetadata (a follower's durable position, on
 * the leader) and WatchMetadata (the log stream to followers, catching-up
 * candidates and other watchers).
 */
export class LogRpc {
  constructor(
    private readonly ctx: NodeContext,
    private readonly leadership: Leadership,
    private readonly commit: LeaderCommit,
    private readonly follower: Follower,
  ) {}

  /** GetLogState: a plain query (term 0) or a candidate's request (a promise to refuse lower terms). */
  async getLogState(req: GetLogStateRequest): Promise<GetLogStateResponse> {
    const { ctx } = this;
    if (req.term > 0n) {
      if (req.term < ctx.currentTerm()) {
        throw new StaleTermError(`candidate term ${req.term} is stale: current term ${ctx.currentTerm()}`);
      }
      const voted = ctx.store.votedFor;
      if (req.term === ctx.store.currentTerm && voted !== '' && voted !== req.candidateId) {
        // Two candidates with one term (only after the lease store lost its counter twice).
        throw new StaleTermError(`term ${req.term} already belongs to ${voted}: current term ${req.term}`);
      }
      await this.leadership.adoptTerm(req.term, req.candidateId);
      if (req.candidateAddress && req.candidateAddress !== ctx.selfAddress) {
        if (req.candidateId) ctx.peerIds.set(req.candidateAddress, req.candidateId);
        ctx.leaderInfo = { id: req.candidateId, address: req.candidateAddress, term: req.term };
        if (ctx.role === 'follower') this.follower.start();
      }
    }
    return create(GetLogStateResponseSchema, {
      directoryId: ctx.id,
      lastIndex: ctx.store.lastIndex,
      lastTerm: ctx.store.lastTerm,
      commitIndex: ctx.commitIndex,
      currentTerm: ctx.currentTerm(),
    });
  }

  /** AckMetadata: a follower's durable position in this leader's log. */
  async ackMetadata(req: AckMetadataRequest): Promise<AckMetadataResponse> {
    const { ctx } = this;
    if (req.term > ctx.leadTerm) await this.leadership.adoptTerm(req.term);
    if (ctx.role !== 'leader' || req.term !== ctx.leadTerm) {
      throw new NotLeaderError(`directory ${ctx.id} is not the leader of term ${req.term}`, ctx.leader());
    }
    this.commit.acknowledge(req.directoryId, req.durableIndex);
    return create(AckMetadataResponseSchema, { commitIndex: ctx.commitIndex });
  }

  /**
   * WatchMetadata. Directory followers (include_uncommitted) are served by the
   * leader only; a candidate catching up (CATCHUP_TERM_HEADER) gets this
   * instance's raw log; other watchers get committed entries from any instance.
   */
  async *watch(req: WatchMetadataRequest, hctx: HandlerContext): AsyncGenerator<WatchMetadataResponse> {
    const { ctx } = this;
    const store = ctx.store;
    const catchupTerm = BigInt(hctx.requestHeader.get(CATCHUP_TERM_HEADER) ?? '0');
    const raw = req.includeUncommitted;
    if (raw && catchupTerm === 0n && ctx.role !== 'leader') {
      const l = ctx.leader();
      if (l) throw new NotLeaderError(`directory ${ctx.id} is not the leader`, l);
      throw new UnavailableError(`no directory leader right now (${ctx.describeNoLeader()})`);
    }
    if (catchupTerm > 0n && catchupTerm < ctx.currentTerm()) {
      throw new StaleTermError(`catch-up term ${catchupTerm} is stale`);
    }
    const epoch = ctx.epoch;
    const asLeader = raw && catchupTerm === 0n;
    const term = () => (asLeader ? ctx.leadTerm : store.lastTerm);
    const limit = () => (raw ? store.lastIndex : ctx.state.appliedIndex);
    let next = req.fromIndex === 0n ? 0n : req.fromIndex;
    let sentCommit = -1n;
    let sentAt = performance.now();
    const keepaliveMs = watchKeepaliveMs(ctx.cfg.followerSyncIntervalMs);
    const signal = hctx.signal;
    while (!signal.aborted && !ctx.stopped.signal.aborted) {
      if (asLeader && (ctx.epoch !== epoch || ctx.role !== 'leader')) return;
      if (next === 0n || next < store.firstIndex) {
        const snap = this.snapshotForTransfer(raw);
        if (snap) {
          yield create(WatchMetadataResponseSchema, {
            term: term(),
            commitIndex: ctx.commitIndex,
            msg: { case: 'snapshot', value: snap },
          });
          next = snap.index + 1n;
          continue;
        }
        next = store.firstIndex;
      }
      if (next > store.lastIndex + 1n) next = store.lastIndex + 1n;
      const lim = limit();
      if (next <= lim) {
        const n = Number(lim - next + 1n);
        const entries = store.slice(next, Math.min(BATCH, n));
        next += BigInt(entries.length);
        sentCommit = ctx.commitIndex;
        sentAt = performance.now();
        yield create(WatchMetadataResponseSchema, {
          term: term(),
          commitIndex: ctx.commitIndex,
          msg: { case: 'entries', value: { entries } },
        });
        continue;
      }
      // A changed commit index, or an idle stream's keepalive: the watcher tells a
      // live stream from one stuck below HTTP/2 (see Follower's stall check).
      if (ctx.commitIndex !== sentCommit || performance.now() - sentAt >= keepaliveMs) {
        sentCommit = ctx.commitIndex;
        sentAt = performance.now();
        yield create(WatchMetadataResponseSchema, {
          term: term(),
          commitIndex: ctx.commitIndex,
          msg: { case: 'entries', value: { entries: [] } },
        });
        continue;
      }
      await ctx.waitChange(signal, keepaliveMs - (performance.now() - sentAt));
    }
  }

  /** The snapshot to send: the saved one, or (for committed-only watchers) the live state. */
  private snapshotForTransfer(raw: boolean): MetadataSnapshot | null {
    const { store } = this.ctx;
    if (store.snapshot && store.snapshot.index >= store.firstIndex - 1n) return store.snapshot;
    if (!raw) return this.ctx.state.toSnapshot();
    return store.snapshot;
  }
}
