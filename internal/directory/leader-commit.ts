import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { LogEntrySchema } from '../../gen/haystack/v1/metadata_pb.js';
import { UnavailableError } from './errors.js';
import { majorityCommitIndex } from './log-rules.js';
import { minBig, type NodeContext } from './node-context.js';

export type Change = NonNullable<MessageInitShape<typeof LogEntrySchema>['change']>;

interface CommitWaiter {
  index: bigint;
  term: bigint;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * The leader's side of the log: append a change, count followers' durable
 * acknowledgements, advance the commit index by the majority rule (log-rules.ts)
 * while the lease is valid, and apply committed entries (on every role) waking
 * whoever waits for them.
 */
export class LeaderCommit {
  /** Follower acks: directory id → durable index (leader only, this term). */
  private readonly matchIndex = new Map<string, bigint>();
  private commitWaiters: CommitWaiter[] = [];
  private applyWaiters: { index: bigint; resolve: () => void }[] = [];

  constructor(private readonly ctx: NodeContext) {}

  /** Taking office: the followers that answered start at 0 (they count as holding nothing yet). */
  resetFollowers(ids: readonly string[]): void {
    this.matchIndex.clear();
    for (const id of ids) this.matchIndex.set(id, 0n);
  }

  /** Stepping down: fails every pending commit with `err` and forgets the followers. */
  abandon(err: Error): void {
    const waiters = this.commitWaiters;
    this.commitWaiters = [];
    for (const w of waiters) w.reject(err);
    this.matchIndex.clear();
  }

  /** Appends a change of the lead term to the local log; returns its index. */
  appendLocal(change: Change): bigint {
    const { ctx } = this;
    const index = ctx.store.lastIndex + 1n;
    const entry = create(LogEntrySchema, {
      index,
      term: ctx.leadTerm,
      timestampMs: BigInt(ctx.clock.wallMs()),
      change,
    });
    ctx.store.append([entry]);
    void ctx.store.waitDurable(index).then(
      () => this.recomputeCommit(),
      () => {},
    );
    ctx.wakeAll();
    return index;
  }

  /** A follower's acknowledgement of its durable index (capped at the local log). */
  acknowledge(directoryId: string, durableIndex: bigint): void {
    const capped = minBig(durableIndex, this.ctx.store.lastIndex);
    const prev = this.matchIndex.get(directoryId) ?? 0n;
    if (capped > prev) this.matchIndex.set(directoryId, capped);
    this.ctx.followerSeen.set(directoryId, { durable: capped, atMono: performance.now() });
    this.recomputeCommit();
  }

  /** Resolves once entry `index` of `term` is committed and applied here; rejects if it was replaced. */
  waitCommitted(index: bigint, term: bigint): Promise<void> {
    const { ctx } = this;
    if (ctx.commitIndex >= index && ctx.state.appliedIndex >= index) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.commitWaiters.push({ index, term, resolve, reject });
    });
  }

  /** Leader: the highest index a majority holds durably, if it is of this term and the lease is valid. */
  recomputeCommit(): void {
    const { ctx } = this;
    if (ctx.role !== 'leader') return;
    const next = majorityCommitIndex({
      durable: ctx.store.durableIndex,
      acked: this.matchIndex.values(),
      majority: ctx.majority,
      commitIndex: ctx.commitIndex,
      leadTerm: ctx.leadTerm,
      termAt: (i) => ctx.store.termAt(i),
    });
    if (next === null) return;
    // Never acknowledge once the lease's local validity ran out (another leader may exist).
    if (!ctx.keeper.isValid()) return;
    ctx.log.debug({ term: ctx.leadTerm, commitIndex: next }, 'committed');
    ctx.commitIndex = next;
    this.applyCommitted();
    ctx.wakeAll();
  }

  /** Follower: the commit index learned from the leader advanced to `index`. */
  advanceTo(index: bigint): void {
    this.ctx.commitIndex = index;
    this.applyCommitted();
  }

  /** Applies committed entries held locally, then settles commit and apply waiters. */
  private applyCommitted(): void {
    const { ctx } = this;
    const upTo = minBig(ctx.commitIndex, ctx.store.lastIndex);
    while (ctx.state.appliedIndex < upTo) {
      const e = ctx.store.entry(ctx.state.appliedIndex + 1n);
      if (!e) break;
      ctx.state.apply(e);
      ctx.hooks.onApplied?.(e);
    }
    const applied = ctx.state.appliedIndex;
    if (this.commitWaiters.length > 0) {
      const done = this.commitWaiters.filter((w) => w.index <= applied);
      this.commitWaiters = this.commitWaiters.filter((w) => w.index > applied);
      for (const w of done) {
        if (ctx.store.termAt(w.index) === w.term) w.resolve();
        else
          w.reject(
            new UnavailableError(`log entry ${w.index} was replaced by another leader's entry: retry`),
          );
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
    const { ctx } = this;
    if (ctx.state.appliedIndex >= index) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = { index, resolve: () => resolve(true) };
      this.applyWaiters.push(w);
      setTimeout(() => {
        this.applyWaiters = this.applyWaiters.filter((x) => x !== w);
        resolve(this.ctx.state.appliedIndex >= index);
      }, timeoutMs).unref();
    });
  }
}
