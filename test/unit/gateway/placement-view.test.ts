import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import {
  type MetadataWatch,
  PlacementView,
  sourceIsBehind,
} from '../../../internal/gateway/placement-view.js';
import { leaderEntry } from './fakes.js';

const log = pino({ level: 'silent' });

/** Resolves when `signal` aborts. */
const aborted = (signal?: AbortSignal) =>
  new Promise<void>((r) =>
    signal?.aborted ? r() : signal?.addEventListener('abort', () => r(), { once: true }),
  );

const until = async (cond: () => boolean, what: string) => {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`never: ${what}`);
};

describe('sourceIsBehind (pure)', () => {
  const reported = { term: 13n, sinceMs: 1_000 };
  it('is behind once a store has seen a newer term for the grace', () => {
    expect(sourceIsBehind(12n, reported, 2_000, 1_000)).toBe(true);
  });
  it('is not behind within the grace (a view lags a new leader by one push)', () => {
    expect(sourceIsBehind(12n, reported, 1_999, 1_000)).toBe(false);
  });
  it('is not behind once the view has the term, or with no report', () => {
    expect(sourceIsBehind(13n, reported, 9_000, 1_000)).toBe(false);
    expect(sourceIsBehind(14n, reported, 9_000, 1_000)).toBe(false);
    expect(sourceIsBehind(12n, undefined, 9_000, 1_000)).toBe(false);
  });
});

describe('PlacementView leaves a directory that is behind a term a store has seen', () => {
  it('follows another directory, resuming after its applied index', async () => {
    // Directory A, cut off from its peers: term 12, then an open stream with nothing new.
    // Directory B: the new leader's term 13.
    const calls: { source: string; fromIndex?: bigint; nextSource?: boolean }[] = [];
    let source = 0;
    const watch: MetadataWatch = async function* (req, signal) {
      if (req.nextSource) source++;
      const name = source % 2 === 0 ? 'A' : 'B';
      calls.push({ source: name, fromIndex: req.fromIndex, nextSource: req.nextSource });
      if (name === 'A') {
        if (req.fromIndex === 0n) yield leaderEntry(1n, 12n, 'directory-2');
      } else {
        yield leaderEntry(2n, 13n, 'directory-1');
      }
      await aborted(signal);
    };
    const view = new PlacementView(watch, 'gw-test', log, 20);
    view.start();
    try {
      await until(() => view.leaderTerm === 12n, 'the view at term 12');
      // A term at or below the view's changes nothing.
      view.noteStoreTerm(12n);
      // The store's refusal named term 13.
      view.noteStoreTerm(13n);
      await until(() => view.leaderTerm === 13n, 'the view at term 13');
      expect(calls).toEqual([
        { source: 'A', fromIndex: 0n, nextSource: false },
        { source: 'B', fromIndex: 2n, nextSource: true },
      ]);
      expect(view.state.leaderId).toBe('directory-1');
    } finally {
      view.stop();
    }
  });
});
