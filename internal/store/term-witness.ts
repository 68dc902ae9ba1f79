import { setTimeout as sleep } from 'node:timers/promises';
import { MAX_WIRE_INT64 } from '../security/peer-checks.js';

/** What the directories said when asked for their term (DirectoryTermWitness's `ask`). */
export interface DirectoryTermAnswer {
  /** The highest term any directory that answered stated (0 when none answered). */
  term: bigint;
  /** How many directories answered. */
  answered: number;
  /** How many were asked (every configured directory). */
  of: number;
}

/** Why a relayed term is not acted on: no directory states it, or too few answered to tell. */
export type TermVerdict =
  | { ok: true }
  | { ok: false; reason: 'not-stated' | 'unconfirmed'; answer: DirectoryTermAnswer };

const NO_ANSWER: DirectoryTermAnswer = { term: 0n, answered: 0, of: 0 };

/** One round of questions: when it began asking (undefined while it waits its turn), the highest term its callers want. */
interface Round {
  answer: Promise<DirectoryTermAnswer>;
  askedAt: number | undefined;
  wanted: bigint;
}

/** Least time between two rounds of questions to the directories (ms). */
export const ASK_GAP_MS = 250;

/**
 * The directory terms a store may act on when a gateway or another store relays
 * one (a Write with forward_to, a Delete). Stores never hear from a directory on
 * those calls: the term comes second-hand, and a gateway's certificate alone must
 * not let it invent a term ahead of the real leader's. Such a term, once accepted,
 * would fence out every honest gateway until the directories' terms caught up
 * (issue 12: "a term is accepted only from an authenticated directory").
 *
 * Guarantee: `confirm(t)` resolves `{ ok: true }` only once a directory (a server
 * that proved role `directory` over mTLS) has stated a term ≥ t — on this store's
 * heartbeat stream (`observe`) or answering `ask` now. Directories state only
 * terms one of them won (the Redis counter issues them, docs/directory.md)
 * or learnt from the winner, and never forget one (currentTerm is on disk).
 * So when every configured directory answers below t, no directory holds t: it
 * was forged (`not-stated`). When some did not answer, the one that won t may be
 * among them (`unconfirmed`: the caller should retry).
 *
 * Cost: nothing while relayed terms are at or below the highest stated (every call
 * but the first after an election). Otherwise one round of `ask` (every directory,
 * in parallel): at most one round in flight and one waiting, ASK_GAP_MS apart, so
 * a stream of forged terms cannot make the store flood the directories.
 */
export class DirectoryTermWitness {
  private stated: bigint;
  /** The latest round: its promise, and when it began asking (undefined while it waits its turn). */
  private latest: Round | undefined;

  constructor(
    /** The highest directory term this store already acted on (FencingTerms.highest('directory')). */
    initial: bigint,
    /**
     * Asks every configured directory its term; may resolve early once one states
     * at least `wanted()` (the highest term the round's callers wait for). A silent
     * directory does not count as answered.
     */
    private readonly ask: (wanted: () => bigint) => Promise<DirectoryTermAnswer>,
    private readonly clock: () => number = () => performance.now(),
  ) {
    this.stated = initial;
  }

  /** The highest term a directory has stated. */
  highest(): bigint {
    return this.stated;
  }

  /** A term a directory stated to this store (its heartbeat answers). Out-of-range values are ignored. */
  observe(term: bigint): void {
    if (term > this.stated && term <= MAX_WIRE_INT64) this.stated = term;
  }

  /** Whether `term` may be acted on: at once when stated already, else after a round of questions begun after this call. */
  async confirm(term: bigint): Promise<TermVerdict> {
    if (term <= this.stated) return { ok: true };
    const answer = await this.roundAfter(this.clock(), term);
    if (term <= this.stated) return { ok: true };
    return {
      ok: false,
      reason: answer.answered >= answer.of && answer.of > 0 ? 'not-stated' : 'unconfirmed',
      answer,
    };
  }

  /** A round that begins asking at or after `t0`: the waiting one, or a new one after the latest. */
  private roundAfter(t0: number, term: bigint): Promise<DirectoryTermAnswer> {
    const prev = this.latest;
    if (prev && (prev.askedAt === undefined || prev.askedAt >= t0)) {
      if (term > prev.wanted) prev.wanted = term;
      return prev.answer;
    }
    const entry: Round = { answer: Promise.resolve(NO_ANSWER), askedAt: undefined, wanted: term };
    entry.answer = (async () => {
      if (prev) {
        await prev.answer;
        const wait = (prev.askedAt ?? 0) + ASK_GAP_MS - this.clock();
        if (wait > 0) await sleep(wait);
      }
      entry.askedAt = this.clock();
      const answer = await this.ask(() => entry.wanted).catch(() => NO_ANSWER);
      this.observe(answer.term);
      return answer;
    })();
    this.latest = entry;
    return entry.answer;
  }
}

/** A directory's GetClusterStatus, as askDirectoryTerms needs it. */
export interface TermSource {
  getClusterStatus(
    req: { localOnly: boolean },
    opts: { timeoutMs: number },
  ): Promise<{ term: bigint; directories: ReadonlyArray<{ term: bigint }> }>;
}

/**
 * One round of DirectoryTermWitness's questions: GetClusterStatus (local only) to
 * every directory at once, each given `timeoutMs`. Resolves when one states at least
 * `wanted()` (a paused directory does not hold the round up), or when all have
 * answered or failed.
 */
export function askDirectoryTerms(
  sources: readonly TermSource[],
  wanted: () => bigint,
  timeoutMs = 2000,
): Promise<DirectoryTermAnswer> {
  return new Promise((resolve) => {
    let term = 0n;
    let answered = 0;
    let settled = 0;
    const done = () => resolve({ term, answered, of: sources.length });
    if (sources.length === 0) done();
    for (const src of sources) {
      src.getClusterStatus({ localOnly: true }, { timeoutMs }).then(
        (res) => {
          answered++;
          for (const t of [res.term, res.directories[0]?.term ?? 0n]) if (t > term) term = t;
          if (++settled === sources.length || term >= wanted()) done();
        },
        () => {
          if (++settled === sources.length) done();
        },
      );
    }
  });
}
