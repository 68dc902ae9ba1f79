/**
 * The replicated log's decisions, as pure functions (Raft, Ongaro & Ousterhout,
 * "In Search of an Understandable Consensus Algorithm", §5.3–5.4). The parts of
 * DirectoryNode do the I/O around them; docs/directory.md gives the argument.
 */

/** A log position: the index and term of an instance's last entry. */
export interface LogPosition {
  lastIndex: bigint;
  lastTerm: bigint;
}

/**
 * Raft's "more up to date" (§5.4.1): a higher last term wins; with equal last
 * terms, the longer log wins. Equal positions are not more up to date.
 */
export function isMoreUpToDate(a: LogPosition, b: LogPosition): boolean {
  return a.lastTerm > b.lastTerm || (a.lastTerm === b.lastTerm && a.lastIndex > b.lastIndex);
}

/**
 * A candidate's catch-up source: among the peers that answered, the most up to
 * date one that is more up to date than the candidate itself; null when the
 * candidate's own log is at least as up to date as every answer. Ties keep the
 * earlier peer.
 */
export function mostAdvancedPeer<P extends LogPosition>(self: LogPosition, peers: readonly P[]): P | null {
  let best: P | null = null;
  for (const p of peers) {
    if (isMoreUpToDate(p, self) && (!best || isMoreUpToDate(p, best))) best = p;
  }
  return best;
}

/**
 * The leader's commit rule. The candidate index is the highest one held
 * durably by a majority: the `majority`-th highest of the leader's own durable
 * index and the followers' acknowledged ones (followers that never acked count
 * 0 only when listed). It commits only if it advances `commitIndex` and its
 * entry is of the leader's term — Raft §5.4.2: older entries commit only
 * together with one of the current term. Returns the new commit index, or null.
 * (The caller also requires a locally valid lease.)
 */
export function majorityCommitIndex(o: {
  durable: bigint;
  acked: Iterable<bigint>;
  majority: number;
  commitIndex: bigint;
  leadTerm: bigint;
  termAt: (index: bigint) => bigint | undefined;
}): bigint | null {
  const positions = [o.durable, ...o.acked].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0));
  const candidate = positions[o.majority - 1];
  if (candidate === undefined || candidate <= o.commitIndex) return null;
  if (o.termAt(candidate) !== o.leadTerm) return null;
  return candidate;
}

/** What a follower's log has, for matching one received entry. */
export interface LocalLog {
  firstIndex: bigint;
  lastIndex: bigint;
  termAt(index: bigint): bigint | undefined;
}

/**
 * What to do with one entry received from the leader (Log Matching, §5.3):
 * - `compacted`: at or before the first retained index — committed, hence the
 *   same on every leader; nothing to do.
 * - `held`: same index and term already in the log.
 * - `truncate`: same index, different term — cut the log from this index, then
 *   append. Never at or below the commit index: that is `conflict-committed`, a
 *   bug that must stop the stream.
 * - `append`: the next index.
 * - `gap`: beyond the next index; the stream must be reopened.
 */
export type EntryAction = 'compacted' | 'held' | 'truncate' | 'conflict-committed' | 'append' | 'gap';

export function matchEntry(
  entry: { index: bigint; term: bigint },
  log: LocalLog,
  commitIndex: bigint,
): EntryAction {
  if (entry.index <= log.firstIndex - 1n) return 'compacted';
  if (entry.index <= log.lastIndex) {
    if (log.termAt(entry.index) === entry.term) return 'held';
    return entry.index <= commitIndex ? 'conflict-committed' : 'truncate';
  }
  return entry.index === log.lastIndex + 1n ? 'append' : 'gap';
}

/**
 * A follower's commit index after hearing the leader's: never beyond what it
 * verified from this leader's stream (`matched`), never backwards. Returns the
 * new commit index, or null when it does not advance.
 */
export function followerCommitIndex(
  leaderCommit: bigint,
  matched: bigint,
  commitIndex: bigint,
): bigint | null {
  const c = leaderCommit < matched ? leaderCommit : matched;
  return c > commitIndex ? c : null;
}
