import { ConnectError } from '@connectrpc/connect';
import { LeaseKeeper } from '../lease/lease-keeper.js';
import type { Clock, LeaseInfo, LeaseStore } from '../lease/lease-store.js';
import { leaseStoreLogging } from '../lease/lease-store-log.js';
import type { Logger } from '../server/logger.js';
import type { DirectoryConfig } from './config.js';
import { UnavailableError } from './errors.js';
import type { Follower, StreamSession } from './follower.js';
import { gatherAnswers } from './gather.js';
import type { LeaderCommit } from './leader-commit.js';
import { mostAdvancedPeer } from './log-rules.js';
import type { NodeContext } from './node-context.js';
import { CATCHUP_TERM_HEADER } from './peers.js';

/** The lease's safety margin (ms): LEADER_TIMEOUT/5 clamped to 50 ms..1 s. */
export function leaseMarginMs(leaderTimeoutMs: number): number {
  return Math.min(1000, Math.max(50, Math.round(leaderTimeoutMs / 5)));
}

/**
 * The leader lease of one instance (docs/directory.md "Leadership: lease + term"):
 * TTL = LEADER_TIMEOUT, renewed every LEADER_HEARTBEAT_INTERVAL, counted valid
 * until `sent + ttl - margin` with margin = LEADER_TIMEOUT/5 clamped to 50 ms..1 s.
 * With the in-process lease (REDIS_URL empty) only the first of DIRECTORY_PEERS may lead.
 */
export function createLeaseKeeper(o: {
  cfg: DirectoryConfig;
  leaseStore: LeaseStore;
  clock: Clock;
  selfAddress: string;
  log: Logger;
  /** Further condition to try for the lease (the node's back-off after losing its majority). */
  mayAcquire?: () => boolean;
}): LeaseKeeper {
  const { cfg, selfAddress, log } = o;
  const memoryLease = cfg.redisUrl === '';
  const staticLeader = cfg.peers[0] ?? selfAddress;
  const margin = leaseMarginMs(cfg.leaderTimeoutMs);
  return new LeaseKeeper({
    store: o.leaseStore,
    clock: o.clock,
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
    mayAcquire: () => (!memoryLease || staticLeader === selfAddress) && (o.mayAcquire?.() ?? true),
    ...leaseStoreLogging(log),
  });
}

/**
 * Leader changes of one instance: reacting to the lease holder, the candidacy
 * that follows winning the lease (term, promises from a majority, catch-up,
 * LeaderChanged committed — then writes are served), stepping down, and
 * adopting a newer term seen on the wire.
 */
export class Leadership {
  constructor(
    private readonly ctx: NodeContext,
    private readonly commit: LeaderCommit,
    private readonly follower: Follower,
  ) {
    const { keeper, store, cfg } = ctx;
    if (cfg.redisUrl === '' && (cfg.peers[0] ?? ctx.selfAddress) !== ctx.selfAddress) {
      // Nobody else can see an in-process lease: follow the one instance that leads.
      const staticLeader = cfg.peers[0] as string;
      ctx.leaderInfo = { id: staticLeader, address: staticLeader, term: 0n };
    }
    keeper.observeTerm(store.currentTerm);
    keeper.observeTerm(store.lastTerm);
    keeper.on((e) => {
      if (e.type === 'acquired') void this.runCandidacy(e.term);
      else if (e.type === 'lost') this.stepDown(`lost the leader lease: ${e.reason}`);
      else this.onHolder(e.current);
    });
  }

  /** Another instance holds the lease: follow it. */
  private onHolder(cur: LeaseInfo | null): void {
    const { ctx } = this;
    if (!cur) return;
    const [id, address] = splitHolder(cur.holder);
    if (!id || !address || address === ctx.selfAddress) return;
    if (ctx.leaderInfo?.address !== address || ctx.leaderInfo.term !== cur.term) {
      ctx.leaderInfo = { id, address, term: cur.term };
      ctx.log.info({ leader: id, address, term: cur.term }, 'leader lease holder');
      if (ctx.role === 'follower') this.follower.start();
    }
  }

  private async runCandidacy(term: bigint): Promise<void> {
    const { ctx } = this;
    const { store, keeper } = ctx;
    const epoch = ++ctx.epoch;
    const t0 = performance.now();
    ctx.role = 'candidate';
    ctx.leadTerm = term;
    ctx.leaderReady = false;
    ctx.leaderInfo = null;
    this.follower.stop();
    ctx.notLeadingReason = `directory ${ctx.id} is taking office (term ${term})`;
    ctx.log.info({ term }, 'won the leader lease: catching up before serving writes');
    try {
      await store.setCurrentTerm(term, ctx.id);
      // Gather log positions from a majority; each one that answers promises to
      // refuse lower terms from now on (like a Raft vote). A call may take as long as
      // the lease stays valid; past a third of a lease, a majority that has answered
      // is enough (gather.ts).
      const validityMs = ctx.cfg.leaderTimeoutMs - leaseMarginMs(ctx.cfg.leaderTimeoutMs);
      const graceMs = Math.max(300, Math.round(ctx.cfg.leaderTimeoutMs / 3));
      const states = await gatherAnswers(
        ctx.peers.map(async (address) => {
          try {
            const res = await ctx
              .client(address)
              .getLogState(
                { term, candidateId: ctx.id, candidateAddress: ctx.selfAddress },
                { timeoutMs: validityMs },
              );
            ctx.peerIds.set(address, res.directoryId);
            return { address, res };
          } catch (err) {
            const ce = ConnectError.from(err);
            const m = /current term (\d+)/.exec(ce.rawMessage);
            if (m?.[1]) keeper.observeTerm(BigInt(m[1]));
            ctx.log.debug({ peer: address, err: ce.message }, 'GetLogState failed');
            return null;
          }
        }),
        ctx.majority - 1,
        graceMs,
      );
      if (epoch !== ctx.epoch) return;
      const answered = states.filter((s): s is NonNullable<typeof s> => s !== null);
      for (const s of answered) keeper.observeTerm(s.res.currentTerm);
      if (keeper.knownTerm > term) {
        await this.abandon(epoch, `a peer has seen term ${keeper.knownTerm} > ${term}`);
        return;
      }
      if (answered.length + 1 < ctx.majority) {
        ctx.acquireAfterMono = performance.now() + ctx.cfg.leaderTimeoutMs;
        await this.abandon(
          epoch,
          `only ${answered.length + 1} of ${ctx.peers.length + 1} directory instances answered (need ${ctx.majority})`,
        );
        return;
      }
      const best = mostAdvancedPeer(
        { lastIndex: store.lastIndex, lastTerm: store.lastTerm },
        answered.map((s) => ({ address: s.address, lastIndex: s.res.lastIndex, lastTerm: s.res.lastTerm })),
      );
      if (best) {
        ctx.log.info(
          { from: best.address, to: best.lastIndex },
          'fetching missing entries from the most advanced peer',
        );
        await this.catchUpFrom(best.address, best.lastIndex, best.lastTerm, term, epoch);
        if (epoch !== ctx.epoch) return;
      }
      if (!keeper.isValid() || keeper.heldTerm !== term) {
        await this.abandon(epoch, 'lease lost while catching up');
        return;
      }
      // Take office: the first entry of the term. Everything before it commits with it.
      ctx.role = 'leader';
      this.commit.resetFollowers(answered.map((s) => s.res.directoryId));
      const index = this.commit.appendLocal({ case: 'leaderChanged', value: { leaderId: ctx.id } });
      ctx.inheritedLog = index > 1n;
      await this.commit.waitCommitted(index, term);
      if (epoch !== ctx.epoch) return;
      ctx.leaderReady = true;
      ctx.leaderSinceMono = performance.now();
      ctx.notLeadingReason = '';
      ctx.log.info(
        { term, index, ms: Math.round(performance.now() - t0), commitIndex: ctx.commitIndex },
        'leader ready: serving writes',
      );
      ctx.hooks.onLeaderReady?.(term);
      ctx.wakeAll();
    } catch (err) {
      if (epoch !== ctx.epoch) return;
      await this.abandon(epoch, `taking office failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /**
   * CheckQuorum (Ongaro, "Consensus: Bridging Theory and Practice", 2014, §6.2): a
   * leader that has not heard from a majority (itself included) within
   * LEADER_TIMEOUT gives up the lease and stays off it for as long, so an instance
   * that can reach a majority takes office. Without it a leader cut from its peers
   * but not from Redis renews its lease for as long as the cut lasts and nothing
   * commits: a store that dies meanwhile is never marked DOWN, and writes to its
   * placement groups fail until the network heals (found by test/netns).
   * Followers acknowledge every FOLLOWER_SYNC_INTERVAL even when idle.
   */
  checkQuorum(): void {
    const { ctx } = this;
    if (ctx.role !== 'leader' || !ctx.leaderReady) return;
    const now = performance.now();
    const window = ctx.cfg.leaderTimeoutMs;
    if (now - ctx.leaderSinceMono < window) return;
    let heard = 1;
    for (const s of ctx.followerSeen.values()) if (now - s.atMono <= window) heard++;
    if (heard >= ctx.majority) return;
    ctx.acquireAfterMono = now + window;
    void this.abandon(
      ctx.epoch,
      `heard from ${heard - 1} of ${ctx.peers.length} peers within ${window} ms (a majority needs ${ctx.majority - 1}): a leader that cannot commit must not hold the lease`,
    );
  }

  private async abandon(epoch: number, reason: string): Promise<void> {
    const { ctx } = this;
    if (epoch !== ctx.epoch) return;
    ctx.log.warn({ reason }, 'giving up the leader lease');
    // Releasing emits 'lost', which steps down; without a lease, step down directly.
    if (ctx.keeper.heldTerm !== null) await ctx.keeper.relinquish(reason);
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
    const { ctx } = this;
    const store = ctx.store;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), Math.max(2000, ctx.cfg.leaderTimeoutMs));
    try {
      const from = ctx.commitIndex + 1n;
      const stream = ctx
        .client(address)
        .watchMetadata(
          { fromIndex: from, watcherId: `directory:${ctx.id}`, includeUncommitted: true },
          { signal: ctl.signal, headers: { [CATCHUP_TERM_HEADER]: term.toString() } },
        );
      const session: StreamSession = { match: from - 1n };
      for await (const msg of stream) {
        if (epoch !== ctx.epoch) return;
        await this.follower.absorb(msg, session, false);
        if (store.lastIndex >= lastIndex && store.termAt(lastIndex) === lastTerm) break;
      }
      if (store.termAt(lastIndex) !== lastTerm) {
        throw new Error(`catch-up from ${address} ended before index ${lastIndex}`);
      }
      await store.waitDurable(store.lastIndex);
    } finally {
      clearTimeout(timer);
      ctl.abort();
    }
  }

  /** Stops leading (if it did) and follows whoever leads. */
  stepDown(reason: string): void {
    const { ctx } = this;
    const wasLeading = ctx.role !== 'follower';
    ctx.epoch++;
    if (wasLeading) {
      ctx.log.warn({ term: ctx.leadTerm, reason }, 'stepping down');
      ctx.hooks.onLeaderStop?.(reason);
    }
    ctx.role = 'follower';
    ctx.leaderReady = false;
    ctx.notLeadingReason = reason;
    this.commit.abandon(
      new UnavailableError(
        `directory ${ctx.id} stopped leading before the change was acknowledged (${reason}); ` +
          'it may or may not have been committed: retry (commits are idempotent)',
      ),
    );
    ctx.wakeAll();
    // A follower must not sit on the lease (it would block every other candidate).
    if (ctx.keeper.heldTerm !== null) void ctx.keeper.relinquish(reason);
    if (!ctx.stopped.signal.aborted) this.follower.start();
  }

  /** Raises the term this instance follows (persisted first); steps down if it led an older one. */
  async adoptTerm(term: bigint, leaderId = ''): Promise<void> {
    const { ctx } = this;
    ctx.keeper.observeTerm(term);
    await ctx.store.setCurrentTerm(term, leaderId);
    if (ctx.role !== 'follower' && term > ctx.leadTerm) {
      await ctx.keeper.relinquish(`saw term ${term}`);
      this.stepDown(`a newer term ${term} exists`);
    }
  }
}

function splitHolder(holder: string): [string, string] {
  const bar = holder.indexOf('|');
  return bar < 0 ? [holder, ''] : [holder.slice(0, bar), holder.slice(bar + 1)];
}
