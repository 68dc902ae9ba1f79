import { Code, ConnectError } from '@connectrpc/connect';
import type { WatchMetadataResponse } from '../../gen/haystack/v1/directory_pb.js';
import { MetadataState } from '../directory/state-machine.js';
import type { Logger } from '../server/logger.js';

/**
 * The directory's WatchMetadata stream as the view consumes it (DirectoryClient.watchMetadata);
 * `nextSource`: follow another directory than the one followed last.
 */
export type MetadataWatch = (
  req: { fromIndex?: bigint; watcherId?: string; nextSource?: boolean },
  signal?: AbortSignal,
) => AsyncIterable<WatchMetadataResponse>;

/** How long the view may stay behind a term a store has seen before it leaves its directory (ms). */
export const BEHIND_GRACE_MS = 1_000;

/** A directory term a store has seen above the view's, and when it was first reported (ms, performance.now()). */
export interface ReportedTerm {
  term: bigint;
  sinceMs: number;
}

/**
 * Whether the directory the view follows is behind (pure): a store reported a
 * newer directory term than the view holds, and the view has not caught up within
 * `graceMs` — a view lags a new leader by one push normally, while a directory cut
 * off from its peers (still serving its stream) never brings the new term
 * (docs/faults.md N5).
 */
export function sourceIsBehind(
  viewTerm: bigint,
  reported: ReportedTerm | undefined,
  nowMs: number,
  graceMs: number,
): boolean {
  return reported !== undefined && reported.term > viewTerm && nowMs - reported.sinceMs >= graceMs;
}

/**
 * A gateway's copy of the directory's placement state (placement groups, extra
 * replicas, stores), followed over WatchMetadata (committed entries only), so a
 * read or write resolves its stores with no directory call. Per-blob records of a
 * v1 cluster are not kept (MetadataState with perBlob off): the view's memory does
 * not grow with the number of blobs.
 *
 * Staleness: the view lags the leader by one push (milliseconds) normally, but
 * without bound when its directory is cut off (N5). A write aimed at a group that
 * changed meanwhile still reaches every store that was a member; one that did not
 * reach every current member is acknowledged only on a map confirmed current within
 * MAP_STALE_AFTER (confirmedWithin, GroupPath's ack check); see
 * docs/design/metadata-at-scale.md.
 */
export class PlacementView {
  state = new MetadataState({ perBlob: false });
  private loaded = false;
  /** A gap was seen: ask for everything again (a snapshot replaces the view). */
  private reload = false;
  private readonly waiters: (() => void)[] = [];
  private readonly stopCtl = new AbortController();
  /** Aborts the current stream alone (its directory is behind). */
  private streamCtl = new AbortController();
  /** The current stream delivered a message (a stream still waiting for its first is not judged behind). */
  private streamHeard = false;
  /** The next stream is to come from another directory. */
  private nextSource = false;
  /** The newest directory term a store reported above the view's. */
  private reported: ReportedTerm | undefined;
  private behindTimer: NodeJS.Timeout | undefined;
  /**
   * When the view was last confirmed to hold every entry the directory leader had
   * committed (performance.now() of asking; -Infinity: never). A directory cut off
   * from its peers keeps serving the stream, keepalives included (N5), so only a
   * leader's answer confirms the view current.
   */
  private confirmedAt = Number.NEGATIVE_INFINITY;
  /**
   * The leader's commit index that confirmation was for: a view reloaded from an older
   * snapshot since (appliedIndex below it) is not confirmed, however recent confirmedAt.
   */
  private confirmedIndex = 0n;
  private confirming: Promise<boolean> | undefined;
  /** Woken after entries or a snapshot are applied (whenApplied). */
  private readonly appliedWaiters = new Set<() => void>();

  constructor(
    private readonly watch: MetadataWatch,
    private readonly watcherId: string,
    private readonly log: Logger,
    private readonly behindGraceMs = BEHIND_GRACE_MS,
  ) {}

  /**
   * A store refused a write as deposed and named the directory term it has seen
   * (FENCED_TERM_HEADER). When the view is still below that term after the grace,
   * its directory is behind: the view drops that stream and follows another
   * directory (resuming from its applied index; nothing is reloaded).
   */
  noteStoreTerm(term: bigint): void {
    if (term <= this.leaderTerm || this.stopCtl.signal.aborted) return;
    // The grace runs from the first report the view has not caught up with: a newer
    // term arriving after the view reached the older one starts it afresh.
    const prev = this.reported && this.reported.term > this.leaderTerm ? this.reported : undefined;
    const sinceMs = prev?.sinceMs ?? performance.now();
    if (!prev || term > prev.term) this.reported = { term, sinceMs };
    this.scheduleBehindCheck(sinceMs + this.behindGraceMs - performance.now());
  }

  private scheduleBehindCheck(inMs: number): void {
    if (this.behindTimer) return;
    this.behindTimer = setTimeout(() => this.checkBehind(), Math.max(0, inMs));
    this.behindTimer.unref();
  }

  private checkBehind(): void {
    this.behindTimer = undefined;
    const r = this.reported;
    if (!r || this.stopCtl.signal.aborted) return;
    if (r.term <= this.leaderTerm) {
      this.reported = undefined; // caught up
      return;
    }
    const now = performance.now();
    if (!sourceIsBehind(this.leaderTerm, r, now, this.behindGraceMs)) {
      this.scheduleBehindCheck(r.sinceMs + this.behindGraceMs - now);
      return;
    }
    this.log.warn(
      { viewTerm: String(this.leaderTerm), storeTerm: String(r.term), graceMs: this.behindGraceMs },
      'placement view: a store has seen a newer directory term than the followed directory brings; following another directory',
    );
    this.reported = undefined;
    this.nextSource = true;
    this.streamCtl.abort();
  }

  /**
   * The directory leader's fencing term, as the stores must see it on a Write
   * with forward_to and on a Delete (they refuse term 0 and older terms): the
   * term of the latest LeaderChanged applied, or of the latest entry (a leader
   * stamps its entries with its term), which a snapshot also carries. 0 until
   * the view is loaded.
   */
  get leaderTerm(): bigint {
    const { leaderTerm, appliedTerm } = this.state;
    // biome-ignore lint/complexity/useMathMinMax: bigints; Math.max takes numbers
    return leaderTerm > appliedTerm ? leaderTerm : appliedTerm;
  }

  /**
   * Whether the view is known to hold every entry the directory leader had committed
   * at most `maxAgeMs` ago. When the last confirmation is older, asks the leader's
   * commit index once (`leaderIndex`; concurrent callers share the question) and
   * waits for the view to apply it, both within `maxAgeMs`. False when no leader
   * answered or the view did not catch up in time.
   */
  async confirmedWithin(maxAgeMs: number, leaderIndex: () => Promise<bigint>): Promise<boolean> {
    if (this.confirmed(maxAgeMs)) return true;
    this.confirming ??= this.confirm(maxAgeMs, leaderIndex).finally(() => {
      this.confirming = undefined;
    });
    await this.confirming;
    return this.confirmed(maxAgeMs);
  }

  /**
   * Asks the leader's commit index now (a question of its own, not one already in
   * flight) and waits for the view to apply it, all within `budgetMs`. True once it
   * has; false when no leader answered or the view did not catch up in time.
   */
  catchUp(budgetMs: number, leaderIndex: () => Promise<bigint>): Promise<boolean> {
    return this.confirm(budgetMs, leaderIndex);
  }

  private confirmed(maxAgeMs: number): boolean {
    return performance.now() - this.confirmedAt <= maxAgeMs && this.state.appliedIndex >= this.confirmedIndex;
  }

  /** True when the leader answered and the view applied its index within `budgetMs`. */
  private async confirm(budgetMs: number, leaderIndex: () => Promise<bigint>): Promise<boolean> {
    const asked = performance.now();
    let timer: NodeJS.Timeout | undefined;
    try {
      const index = await Promise.race([
        leaderIndex(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${budgetMs} ms`)), budgetMs);
        }),
      ]);
      // The leader answered after `asked`: a view at its index holds all committed before then.
      const before = this.state.appliedIndex;
      // The stream judged: one that replaced it meanwhile (or a reload) is not left.
      const judged = this.streamCtl;
      const judgeable = this.streamHeard && !this.reload;
      const waitMs = asked + budgetMs - performance.now();
      if (!(await this.whenApplied(index, waitMs))) {
        // Nothing applied for a second or more while the leader is ahead: the followed
        // directory is stuck behind (a follower that stopped following serves its old
        // state and keepalives), so follow another one.
        if (
          waitMs >= 1000 &&
          judgeable &&
          judged === this.streamCtl &&
          !this.reload &&
          this.state.appliedIndex === before
        ) {
          this.leaveSource(index);
        }
        return false;
      }
      this.confirmedAt = Math.max(this.confirmedAt, asked);
      if (index > this.confirmedIndex) this.confirmedIndex = index;
      return true;
    } catch (err) {
      this.log.debug(
        { err: err instanceof Error ? err.message : String(err) },
        'placement view: could not confirm the map current',
      );
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  private leaveSource(leaderIndex: bigint): void {
    if (this.stopCtl.signal.aborted) return;
    this.log.warn(
      { viewIndex: String(this.state.appliedIndex), leaderIndex: String(leaderIndex) },
      'placement view: the followed directory applies nothing while the leader is ahead; following another directory',
    );
    this.nextSource = true;
    this.streamCtl.abort();
  }

  /** Resolves true once the view has applied `index`, false after `timeoutMs`. */
  private whenApplied(index: bigint, timeoutMs: number): Promise<boolean> {
    if (this.state.appliedIndex >= index) return Promise.resolve(true);
    if (timeoutMs <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const check = () => {
        if (this.state.appliedIndex < index) return;
        done(true);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.appliedWaiters.delete(check);
        resolve(ok);
      };
      this.appliedWaiters.add(check);
    });
  }

  private notifyApplied(): void {
    for (const w of [...this.appliedWaiters]) w();
  }

  /** True once a snapshot (or the log from its start) has been applied. */
  get ready(): boolean {
    return this.loaded;
  }

  start(): void {
    void this.follow();
  }

  stop(): void {
    this.stopCtl.abort();
    clearTimeout(this.behindTimer);
  }

  /** Resolves once the view is loaded; UNAVAILABLE after `timeoutMs`. */
  async whenReady(timeoutMs: number): Promise<void> {
    if (this.loaded) return;
    let timer: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        this.waiters.push(resolve);
        timer = setTimeout(
          () =>
            reject(
              new ConnectError(
                `the gateway has not loaded the directory's placement map within ${timeoutMs} ms: is a directory reachable?`,
                Code.Unavailable,
              ),
            ),
          timeoutMs,
        );
      });
    } finally {
      clearTimeout(timer);
    }
  }

  private markLoaded(): void {
    this.loaded = true;
    for (const w of this.waiters.splice(0)) w();
  }

  private async follow(): Promise<void> {
    const signal = this.stopCtl.signal;
    while (!signal.aborted) {
      const from = this.loaded && !this.reload ? this.state.appliedIndex + 1n : 0n;
      let fresh = from === 0n;
      this.streamCtl = new AbortController();
      this.streamHeard = false;
      const streamSignal = AbortSignal.any([signal, this.streamCtl.signal]);
      const req = { fromIndex: from, watcherId: this.watcherId, nextSource: this.nextSource };
      this.nextSource = false;
      try {
        for await (const msg of this.watch(req, streamSignal)) {
          if (streamSignal.aborted) break;
          this.streamHeard = true;
          if (msg.msg.case === 'snapshot') {
            this.state = MetadataState.fromSnapshot(msg.msg.value, { perBlob: false });
            fresh = false;
            this.reload = false;
            this.markLoaded();
            this.notifyApplied();
          } else if (msg.msg.case === 'entries') {
            if (fresh) {
              // The log from its first entry, no snapshot: start from an empty state.
              this.state = new MetadataState({ perBlob: false });
              fresh = false;
              this.reload = false;
            }
            for (const e of msg.msg.value.entries) {
              if (e.index <= this.state.appliedIndex) continue;
              if (e.index !== this.state.appliedIndex + 1n) {
                throw new Error(`metadata gap: applied ${this.state.appliedIndex}, next ${e.index}`);
              }
              this.state.apply(e);
              if (e.index === 1n) this.markLoaded();
            }
            this.notifyApplied();
          }
        }
      } catch (err) {
        if (signal.aborted) return;
        if (this.streamCtl.signal.aborted) continue; // left a directory that is behind (logged)
        // Only a gap or a refused stream gets here (DirectoryClient resumes the rest).
        // The old view keeps serving until the snapshot that replaces it arrives.
        this.log.warn({ err: (err as Error).message }, 'placement view: metadata stream failed; reloading');
        this.reload = true;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
