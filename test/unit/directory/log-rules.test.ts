import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  followerCommitIndex,
  isMoreUpToDate,
  type LocalLog,
  majorityCommitIndex,
  matchEntry,
  mostAdvancedPeer,
} from '../../../internal/directory/log-rules.js';

/** A log whose entries firstIndex..terms.length+firstIndex-1 have the given terms. */
function log(firstIndex: bigint, terms: bigint[]): LocalLog {
  return {
    firstIndex,
    lastIndex: firstIndex + BigInt(terms.length) - 1n,
    termAt: (i) => terms[Number(i - firstIndex)],
  };
}

describe('isMoreUpToDate / mostAdvancedPeer (Raft §5.4.1)', () => {
  it('a higher last term wins over a longer log', () => {
    expect(isMoreUpToDate({ lastIndex: 3n, lastTerm: 5n }, { lastIndex: 9n, lastTerm: 4n })).toBe(true);
    expect(isMoreUpToDate({ lastIndex: 9n, lastTerm: 4n }, { lastIndex: 3n, lastTerm: 5n })).toBe(false);
  });

  it('with equal last terms the longer log wins; equal positions are not more up to date', () => {
    expect(isMoreUpToDate({ lastIndex: 4n, lastTerm: 2n }, { lastIndex: 3n, lastTerm: 2n })).toBe(true);
    expect(isMoreUpToDate({ lastIndex: 3n, lastTerm: 2n }, { lastIndex: 3n, lastTerm: 2n })).toBe(false);
  });

  it('picks the most up-to-date peer only when it is ahead of the candidate', () => {
    const self = { lastIndex: 10n, lastTerm: 3n };
    const peers = [
      { address: 'a', lastIndex: 12n, lastTerm: 3n },
      { address: 'b', lastIndex: 11n, lastTerm: 4n },
      { address: 'c', lastIndex: 20n, lastTerm: 2n },
    ];
    expect(mostAdvancedPeer(self, peers)?.address).toBe('b');
    expect(mostAdvancedPeer({ lastIndex: 11n, lastTerm: 4n }, peers)).toBeNull();
    expect(mostAdvancedPeer(self, [])).toBeNull();
  });

  it('ties keep the earlier peer', () => {
    const peers = [
      { address: 'a', lastIndex: 5n, lastTerm: 2n },
      { address: 'b', lastIndex: 5n, lastTerm: 2n },
    ];
    expect(mostAdvancedPeer({ lastIndex: 1n, lastTerm: 1n }, peers)?.address).toBe('a');
  });

  it('the chosen peer is at least as up to date as every answer (property)', () => {
    const pos = fc.record({
      lastIndex: fc.bigInt({ min: 0n, max: 50n }),
      lastTerm: fc.bigInt({ min: 0n, max: 5n }),
    });
    fc.assert(
      fc.property(pos, fc.array(pos, { maxLength: 6 }), (self, peers) => {
        const best = mostAdvancedPeer(self, peers);
        const ahead = peers.filter((p) => isMoreUpToDate(p, self));
        if (ahead.length === 0) return best === null;
        return best !== null && peers.every((p) => !isMoreUpToDate(p, best));
      }),
    );
  });
});

describe('majorityCommitIndex (Raft §5.3, §5.4.2)', () => {
  const terms = [1n, 1n, 2n, 2n, 2n]; // indexes 1..5
  const termAt = (i: bigint) => terms[Number(i) - 1];
  /** The commit index of a leader of term 2 over that log. */
  const commit = (durable: bigint, acked: bigint[], majority: number, commitIndex: bigint) =>
    majorityCommitIndex({ durable, acked, majority, commitIndex, leadTerm: 2n, termAt });

  it('commits the highest index a majority holds durably, when it is of the leader term', () => {
    // Leader durable 5, followers at 4 and 1: the 2nd highest of {5, 4, 1} is 4.
    expect(commit(5n, [4n, 1n], 2, 0n)).toBe(4n);
  });

  it('counts the leader only once its own fsync is done', () => {
    expect(commit(2n, [5n, 5n], 3, 0n)).toBeNull();
  });

  it('never commits an entry of an earlier term by counting replicas', () => {
    // A majority holds index 2 (term 1) but the leader leads term 2.
    expect(commit(5n, [2n, 0n], 2, 0n)).toBeNull();
  });

  it('never goes backwards or stays put', () => {
    expect(commit(5n, [4n, 1n], 2, 4n)).toBeNull();
    expect(commit(5n, [3n], 2, 4n)).toBeNull();
  });

  it('has no majority with too few positions', () => {
    expect(commit(5n, [], 2, 0n)).toBeNull();
  });

  it("a single instance commits what it has fsync'd", () => {
    expect(commit(3n, [], 1, 0n)).toBe(3n);
  });

  it('the result is held by a majority and is of the leader term (property)', () => {
    fc.assert(
      fc.property(
        fc.bigInt({ min: 0n, max: 5n }),
        fc.array(fc.bigInt({ min: 0n, max: 5n }), { maxLength: 4 }),
        fc.bigInt({ min: 0n, max: 5n }),
        (durable, acked, commitIndex) => {
          const majority = Math.floor((acked.length + 1) / 2) + 1;
          const c = commit(durable, acked, majority, commitIndex);
          if (c === null) return true;
          const holders = [durable, ...acked].filter((p) => p >= c).length;
          return c > commitIndex && holders >= majority && termAt(c) === 2n;
        },
      ),
    );
  });
});

describe('matchEntry (log matching on absorb)', () => {
  // Retained entries 4..6 of terms 1, 2, 2 (1..3 compacted); commit index 4.
  const l = log(4n, [1n, 2n, 2n]);

  it('ignores entries at or before the compacted prefix', () => {
    expect(matchEntry({ index: 3n, term: 9n }, l, 4n)).toBe('compacted');
  });

  it('keeps an entry with the same index and term', () => {
    expect(matchEntry({ index: 5n, term: 2n }, l, 4n)).toBe('held');
  });

  it('truncates a conflicting uncommitted suffix', () => {
    expect(matchEntry({ index: 5n, term: 3n }, l, 4n)).toBe('truncate');
    expect(matchEntry({ index: 6n, term: 3n }, l, 4n)).toBe('truncate');
  });

  it('refuses a conflict at or below the commit index', () => {
    expect(matchEntry({ index: 4n, term: 3n }, l, 4n)).toBe('conflict-committed');
    expect(matchEntry({ index: 5n, term: 3n }, l, 5n)).toBe('conflict-committed');
  });

  it('appends the next index and reports a gap beyond it', () => {
    expect(matchEntry({ index: 7n, term: 3n }, l, 4n)).toBe('append');
    expect(matchEntry({ index: 8n, term: 3n }, l, 4n)).toBe('gap');
  });

  it('an empty log takes index 1', () => {
    const empty = log(1n, []);
    expect(matchEntry({ index: 1n, term: 1n }, empty, 0n)).toBe('append');
    expect(matchEntry({ index: 2n, term: 1n }, empty, 0n)).toBe('gap');
  });
});

describe('followerCommitIndex', () => {
  it('is min(leader commit, verified from this leader) and never goes back', () => {
    expect(followerCommitIndex(10n, 7n, 3n)).toBe(7n);
    expect(followerCommitIndex(5n, 7n, 3n)).toBe(5n);
    expect(followerCommitIndex(5n, 7n, 5n)).toBeNull();
    expect(followerCommitIndex(4n, 7n, 5n)).toBeNull();
  });
});
