import { ConnectError } from '@connectrpc/connect';
import type { WatchMetadataResponse } from '../../gen/haystack/v1/directory_pb.js';
import { systemClock } from '../lease/lease-store.js';
import { StallWatch } from '../rpc/stall-watch.js';
import type { LeaderCommit } from './leader-commit.js';
import { followerCommitIndex, matchEntry } from './log-rules.js';
import { TruncatedError } from './log-store.js';
import { minBig, type NodeContext } from './node-context.js';
import { MetadataState } from './state-machine.js';
import { firstMessageStallMs } from './watch-liveness.js';

/** How far this instance verified its log against one leader stream. */
export interface StreamSession {
  match: bigint;
}

interface AckState {
  inFlight: boolean;
  again: boolean;
  last: bigint;
  address: string;
  term: bigint;
  session: StreamSession;
}

/**
 * The follower's side of the log (a client of the leader): one WatchMetadata
 * stream to the leader (`include_uncommitted`), each message absorbed into the
 * local log by log matching, and AckMetadata reports of the durable index.
 */
export class Follower {
  private ctl: AbortController | null = null;
  private followTarget: string | null = null;
  private ackState: AckState | null = null;

  constructor(
    private readonly ctx: NodeContext,
    private readonly commit: LeaderCommit,
    /** Raises the term this instance follows (persisted first); steps down if it led an older one. */
    private readonly adoptTerm: (term: bigint, leaderId: string) => Promise<void>,
  ) {}

  /** The leader address followed now, if any. */
  get target(): string | null {
    return this.followTarget;
  }

  /** Aborts the stream (shutting down). */
  abortStream(): void {
    this.ctl?.abort();
  }

  /** Stops following (this instance becomes a candidate). */
  stop(): void {
    this.ctl?.abort();
    this.ctl = null;
    this.followTarget = null;
  }

  /** Follows the leader the context knows (no-op unless a follower; restarts on a new leader). */
  start(): void {
    const { ctx } = this;
    if (ctx.role !== 'follower' || ctx.stopped.signal.aborted) return;
    const target = ctx.leaderInfo?.address ?? null;
    if (target === this.followTarget && this.ctl && !this.ctl.signal.aborted) return;
    this.ctl?.abort();
    this.followTarget = target;
    if (!target) {
      this.ctl = null;
      return;
    }
    const ctl = new AbortController();
    this.ctl = ctl;
    void this.followLoop(target, ctl.signal);
  }

  private async followLoop(address: string, signal: AbortSignal): Promise<void> {
    const { ctx } = this;
    let backoff = 20;
    const stallMs = ctx.cfg.watchStallMs;
    while (!signal.aborted && ctx.role === 'follower') {
      const session: StreamSession = { match: 0n };
      // The leader sends at least a keepalive a second: a stream silent for
      // WATCH_STALL_TIMEOUT is stuck (seen after an HTTP/2 PING timeout under load: the
      // new stream never delivered and the follower fell behind for good), so drop it.
      const stall = new StallWatch(stallMs, signal, firstMessageStallMs(stallMs));
      try {
        const from = ctx.commitIndex + 1n;
        session.match = from - 1n;
        const stream = ctx
          .client(address)
          .watchMetadata(
            { fromIndex: from, watcherId: `directory:${ctx.id}`, includeUncommitted: true },
            { signal: stall.signal },
          );
        for await (const msg of stream) {
          stall.hold(); // absorbing (a snapshot, a truncation) is not silence
          if (ctx.role !== 'follower') return;
          if (!(await this.absorb(msg, session, true))) break;
          stall.heard();
          backoff = 20;
          this.scheduleAck(address, msg.term, session);
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof TruncatedError) continue;
        const ce = ConnectError.from(err);
        if (stall.stalled) ctx.log.warn({ leader: address, stallMs }, 'follow stream stuck: reconnecting');
        else ctx.log.debug({ leader: address, err: ce.message }, 'follow stream ended');
      } finally {
        stall.stop();
      }
      if (signal.aborted) return;
      await systemClock.sleep(backoff, signal);
      backoff = Math.min(backoff * 2, 500);
      ctx.keeper.poke();
    }
  }

  /**
   * Takes one WatchMetadata message into the log: log matching by (index, term)
   * (matchEntry), truncating a conflicting suffix. Returns false when the stream
   * must be dropped (an older term than promised, or a gap). `following` is
   * false for a candidate's catch-up: no term checks, no commit from the stream.
   */
  async absorb(msg: WatchMetadataResponse, session: StreamSession, following: boolean): Promise<boolean> {
    const { ctx } = this;
    const store = ctx.store;
    if (msg.term < store.currentTerm && following) {
      ctx.log.info(
        { streamTerm: msg.term, currentTerm: store.currentTerm },
        'dropping a stream of an older term',
      );
      return false;
    }
    if (following && msg.term > store.currentTerm) await this.adoptTerm(msg.term, ctx.leaderInfo?.id ?? '');
    if (msg.msg.case === 'snapshot') {
      const snap = msg.msg.value;
      if (snap.index > ctx.state.appliedIndex) {
        ctx.log.info(
          { index: snap.index, blobs: snap.blobs.length },
          'installing a snapshot from the leader',
        );
        await store.installSnapshot(snap);
        ctx.state = MetadataState.fromSnapshot(snap);
        if (snap.index > ctx.commitIndex) ctx.commitIndex = snap.index;
      }
      session.match = snap.index;
      ctx.wakeAll();
      return true;
    }
    if (msg.msg.case === 'entries') {
      for (const e of msg.msg.value.entries) {
        switch (matchEntry(e, store, ctx.commitIndex)) {
          case 'compacted':
          case 'held':
            break;
          case 'conflict-committed':
            throw new Error(
              `leader sent entry ${e.index} of term ${e.term} conflicting with a committed entry`,
            );
          case 'truncate':
            ctx.log.info({ from: e.index, lastIndex: store.lastIndex }, 'truncating a conflicting suffix');
            await store.truncateFrom(e.index);
            store.append([e]);
            break;
          case 'append':
            store.append([e]);
            break;
          case 'gap':
            ctx.log.warn(
              { got: e.index, lastIndex: store.lastIndex },
              'gap in the leader stream: reconnecting',
            );
            return false;
        }
        session.match = e.index;
      }
      if (following) {
        const c = followerCommitIndex(msg.commitIndex, session.match, ctx.commitIndex);
        if (c !== null) this.commit.advanceTo(c);
      }
      ctx.wakeAll();
    }
    return true;
  }

  /** Reports min(durable, matched) to the leader once it is fsync'd (coalesced). */
  private scheduleAck(address: string, term: bigint, session: StreamSession): void {
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
    const { ctx } = this;
    const st = this.ackState;
    if (!st || st.inFlight) return;
    st.inFlight = true;
    try {
      do {
        st.again = false;
        const target = st.session.match;
        await ctx.store.waitDurable(minBig(target, ctx.store.lastIndex)).catch(() => {});
        const durable = minBig(ctx.store.durableIndex, st.session.match);
        // Never acknowledge for a term this instance has promised to leave behind: the
        // durable index is computed in the same tick as this check, so every entry it
        // covers was in the log a newer candidate was told about.
        if (st.term < ctx.store.currentTerm) return;
        if (durable === st.last && !force) continue;
        force = false;
        const res = await ctx
          .client(st.address)
          .ackMetadata({ directoryId: ctx.id, term: st.term, durableIndex: durable }, { timeoutMs: 2000 });
        st.last = durable;
        const c = followerCommitIndex(res.commitIndex, st.session.match, ctx.commitIndex);
        if (c !== null && ctx.role === 'follower') this.commit.advanceTo(c);
      } while (st.again);
    } catch (err) {
      ctx.log.debug({ err: ConnectError.from(err).message }, 'ack failed');
    } finally {
      st.inFlight = false;
    }
  }

  /** Re-acknowledges every FOLLOWER_SYNC_INTERVAL while idle (the leader's view of this follower stays fresh). */
  async ackKeepaliveLoop(): Promise<void> {
    const { ctx } = this;
    while (!ctx.stopped.signal.aborted) {
      await systemClock.sleep(ctx.cfg.followerSyncIntervalMs, ctx.stopped.signal);
      if (ctx.role === 'follower' && this.ackState) void this.sendAck(true);
    }
  }
}
