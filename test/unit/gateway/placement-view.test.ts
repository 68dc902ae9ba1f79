import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { pino } from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import {
  type WatchMetadataResponse,
  WatchMetadataResponseSchema,
} from '../../../gen/haystack/v1/directory_pb.js';
import { LogEntrySchema, PlacementMemberState } from '../../../gen/haystack/v1/metadata_pb.js';
import { GroupPath, type PlacementStoreApi } from '../../../internal/gateway/group-path.js';
import {
  type MetadataWatch,
  PlacementView,
  sourceIsBehind,
} from '../../../internal/gateway/placement-view.js';
import { FENCED_TERM_HEADER } from '../../../internal/rpc/errors.js';
import { leaderEntry, pushedStream } from './fakes.js';

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

/**
 * A watch over two directories: each stream starts at `first` until a request asks
 * for the next source (then `second`, and so on alternately); `entry` gives what a
 * directory sends for a request (nothing: an open, silent stream). Records the calls.
 */
function twoDirectories(
  names: [string, string],
  entry: (name: string, fromIndex: bigint) => WatchMetadataResponse | undefined,
) {
  const calls: { source: string; fromIndex?: bigint; nextSource?: boolean }[] = [];
  let source = 0;
  const watch: MetadataWatch = async function* (req, signal) {
    if (req.nextSource) source++;
    const name = names[source % 2] as string;
    calls.push({ source: name, fromIndex: req.fromIndex, nextSource: req.nextSource });
    const msg = entry(name, req.fromIndex ?? 0n);
    if (msg) yield msg;
    await aborted(signal);
  };
  return { calls, watch };
}

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
    const { calls, watch } = twoDirectories(['A', 'B'], (name, from) =>
      name === 'B'
        ? leaderEntry(2n, 13n, 'directory-1')
        : from === 0n
          ? leaderEntry(1n, 12n, 'directory-2')
          : undefined,
    );
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

// Review finding (b) of N5: the grace kept the first report's start when a newer term
// came after the view had caught up with the older one, so a directory that brought
// each new term within one push could be left early.
describe('PlacementView restarts the grace for a newer term once it caught up with the older one', () => {
  it('gives term 13 its own grace when the view reached term 12 in time', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    try {
      const calls: (boolean | undefined)[] = [];
      const pending: WatchMetadataResponse[] = [];
      let wake: (() => void) | undefined;
      const watch: MetadataWatch = async function* (req, signal) {
        calls.push(req.nextSource);
        while (!signal?.aborted) {
          const msg = pending.shift();
          if (msg) yield msg;
          else
            await new Promise<void>((r) => {
              wake = r;
              signal?.addEventListener('abort', () => r(), { once: true });
            });
        }
      };
      const push = (msg: WatchMetadataResponse) => {
        pending.push(msg);
        wake?.();
      };
      const view = new PlacementView(watch, 'gw-test', log, 1_000);
      view.start();
      try {
        push(leaderEntry(1n, 11n, 'directory-0'));
        await vi.advanceTimersByTimeAsync(1);
        expect(view.leaderTerm).toBe(11n);
        view.noteStoreTerm(12n); // t = 0
        await vi.advanceTimersByTimeAsync(300);
        push(leaderEntry(2n, 12n, 'directory-1')); // the directory brings term 12 in time
        await vi.advanceTimersByTimeAsync(200);
        expect(view.leaderTerm).toBe(12n);
        view.noteStoreTerm(13n); // t = 500: a newer term; its grace ends at t = 1500
        await vi.advanceTimersByTimeAsync(700); // t = 1200
        expect(calls).toEqual([false]);
        // t = 1800: still at 12 at t = 1500, so behind; the next stream starts 200 ms later.
        await vi.advanceTimersByTimeAsync(600);
        expect(calls).toEqual([false, true]);
      } finally {
        view.stop();
      }
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('GroupPath tells the view the newer term a store named on a Delete', () => {
  it('asks for another directory when a store refuses the delete as deposed', async () => {
    // One group, one ACTIVE member on store s0; the view at leader term 5.
    const entries = [
      leaderEntry(1n, 5n, 'directory-0').msg,
      {
        case: 'entries' as const,
        value: {
          entries: [
            create(LogEntrySchema, {
              index: 2n,
              term: 5n,
              change: {
                case: 'storeRegistered',
                value: { store: { storeId: 's0', address: '127.0.0.1:1', health: StoreHealth.HEALTHY } },
              },
            }),
            create(LogEntrySchema, {
              index: 3n,
              term: 5n,
              change: {
                case: 'placementChanged',
                value: {
                  groupCount: 1,
                  groups: [{ group: 0, members: [{ storeId: 's0', state: PlacementMemberState.ACTIVE }] }],
                },
              },
            }),
          ],
        },
      },
    ];
    const asked: (boolean | undefined)[] = [];
    const view = new PlacementView(
      async function* (req, signal) {
        asked.push(req.nextSource);
        if (req.fromIndex === 0n)
          for (const msg of entries) yield create(WatchMetadataResponseSchema, { msg });
        await aborted(signal);
      },
      'gw-test',
      log,
      10,
    );
    view.start();
    try {
      await until(() => view.state.placement.enabled, 'the placement loaded');
      const deposed = {
        delete: async () => {
          throw new ConnectError(
            'directory term 5 is older than term 9 already seen',
            Code.FailedPrecondition,
            {
              [FENCED_TERM_HEADER]: '9',
            },
          );
        },
      } as unknown as PlacementStoreApi;
      const path = new GroupPath(
        view,
        () => deposed,
        {
          delete: async () => ({ found: true, extraReplicas: [] }) as never,
          updateReplicas: async () => ({}) as never,
        },
        log,
        200,
        1,
        { mapStaleAfterMs: 1_000, leaderIndex: async () => view.state.appliedIndex },
      );
      const err = await path.delete('a').catch((e: unknown) => ConnectError.from(e));
      expect(err).toMatchObject({ code: Code.Unavailable });
      await until(() => asked.length === 2, 'a second WatchMetadata');
      expect(asked).toEqual([false, true]);
    } finally {
      view.stop();
    }
  });
});

describe('PlacementView.confirmedWithin', () => {
  it('does not count a confirmation once the view was reloaded below the index it confirmed', async () => {
    let calls = 0;
    let gap = () => {};
    const gapped = new Promise<void>((r) => {
      gap = r;
    });
    const watch: MetadataWatch = async function* (_req, signal) {
      calls++;
      if (calls === 1) {
        for (const i of [1n, 2n, 3n]) yield leaderEntry(i, 5n, 'directory-0');
        await Promise.race([gapped, aborted(signal)]);
        yield leaderEntry(10n, 5n, 'directory-0'); // a gap: the view reloads from index 0
      } else {
        yield leaderEntry(1n, 5n, 'directory-0'); // an older source: only its first entry so far
      }
      await aborted(signal);
    };
    const view = new PlacementView(watch, 'gw-test', log, 1_000);
    view.start();
    try {
      await until(() => view.state.appliedIndex === 3n, 'entries 1-3 applied');
      const leader = async () => 3n;
      expect(await view.confirmedWithin(60_000, leader)).toBe(true);
      gap();
      await until(() => calls === 2 && view.state.appliedIndex === 1n, 'the view reloaded to index 1');
      // Confirmed a moment ago, but for index 3, which this view no longer holds (and no
      // leader answers now, so nothing confirms it again).
      const noLeader = async (): Promise<bigint> => {
        throw new Error('no directory leader is reachable');
      };
      expect(await view.confirmedWithin(60_000, noLeader)).toBe(false);
    } finally {
      view.stop();
    }
  });
});

// Network faults, 2026-12-03: a gateway followed a follower directory that had stopped
// following (stuck at index 57 while the leader was at 166). Every write that missed a
// DOWN member needed the map confirmed current, the leader answered 166, the view
// never got there, and writes were refused for the rest of the run.
describe('PlacementView leaves a directory that applies nothing while the leader is ahead', () => {
  it('follows another directory after a confirmation the view could not catch up with', async () => {
    const { calls, watch } = twoDirectories(['stuck', 'live'], (name, from) =>
      name === 'live'
        ? leaderEntry(2n, 4n, 'directory-0')
        : from === 0n
          ? leaderEntry(1n, 4n, 'directory-0')
          : undefined,
    );
    const view = new PlacementView(watch, 'gw-test', log, 20);
    view.start();
    try {
      await until(() => view.state.appliedIndex === 1n, 'the view at index 1');
      // The leader is at 2; the stuck directory never sends it.
      expect(await view.confirmedWithin(1_200, async () => 2n)).toBe(false);
      await until(() => view.state.appliedIndex === 2n, 'the view at index 2');
      expect(calls).toEqual([
        { source: 'stuck', fromIndex: 0n, nextSource: false },
        { source: 'live', fromIndex: 2n, nextSource: true },
      ]);
      expect(await view.confirmedWithin(1_200, async () => 2n)).toBe(true);
    } finally {
      view.stop();
    }
  });

  it('stays when the view moves during the wait (a slow directory, not a stuck one)', async () => {
    const calls: (boolean | undefined)[] = [];
    let deliver: (() => void) | undefined;
    const watch: MetadataWatch = async function* (req, signal) {
      calls.push(req.nextSource);
      yield leaderEntry(1n, 4n, 'directory-0');
      await new Promise<void>((r) => {
        deliver = r;
      });
      yield leaderEntry(2n, 4n, 'directory-0');
      await aborted(signal);
    };
    const view = new PlacementView(watch, 'gw-test', log, 20);
    view.start();
    try {
      await until(() => view.state.appliedIndex === 1n, 'the view at index 1');
      setTimeout(() => deliver?.(), 300);
      // The leader is at 3: index 2 arrives during the wait, 3 does not.
      expect(await view.confirmedWithin(1_200, async () => 3n)).toBe(false);
      await new Promise((r) => setTimeout(r, 300));
      expect(calls).toEqual([false]);
    } finally {
      view.stop();
    }
  });
});

/**
 * A watch whose streams the test drives: each call opens a stream that yields what
 * `push` hands it (nothing until then: an open, silent stream) until its signal aborts.
 */
function drivenWatch() {
  const streams: {
    req: Parameters<MetadataWatch>[0];
    signal: AbortSignal | undefined;
    push: (m: WatchMetadataResponse) => void;
  }[] = [];
  const watch: MetadataWatch = (req, signal) => {
    const s = pushedStream();
    streams.push({ req, signal, push: s.push });
    return s.stream(signal);
  };
  return { streams, watch };
}

/** Runs `fn` on a started view over drivenWatch, under fake timers (the waits are the view's, not the load's). */
async function withDrivenView(
  waitMs: number,
  fn: (d: ReturnType<typeof drivenWatch> & { view: PlacementView }) => Promise<void>,
): Promise<void> {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
  const driven = drivenWatch();
  const view = new PlacementView(driven.watch, 'gw-test', log, waitMs);
  view.start();
  try {
    await fn({ ...driven, view });
  } finally {
    view.stop();
    vi.useRealTimers();
  }
}

/** An idle stream's keepalive: an empty message. */
const keepalive = () => create(WatchMetadataResponseSchema, { term: 4n, commitIndex: 3n });

// The guard in confirm(): a view leaves its directory after a confirmation it could
// not catch up with only when the stream it judged is still the current one, had
// delivered a message and was not reloading when the leader answered, and no reload
// began during the wait. Fake timers: the waits are the view's, not the machine's load.
describe('PlacementView leaves only the stream it judged, never before its first message or during a reload', () => {
  it('does not leave a directory whose stream has not delivered its first message', () =>
    withDrivenView(1_000, async ({ streams, view }) => {
      await vi.advanceTimersByTimeAsync(1);
      streams[0]?.push(leaderEntry(1n, 4n, 'directory-0'));
      await vi.advanceTimersByTimeAsync(1);
      expect(view.state.appliedIndex).toBe(1n);
      // The leader is at 2 and this directory never sends it: the view leaves it.
      const first = view.confirmedWithin(1_200, async () => 2n);
      await vi.advanceTimersByTimeAsync(1_200);
      expect(await first).toBe(false);
      expect(streams[0]?.signal?.aborted).toBe(true);
      await vi.advanceTimersByTimeAsync(200);
      expect(streams.map((s) => s.req.nextSource)).toEqual([false, true]);
      expect(streams[1]?.req.fromIndex).toBe(2n);
      // The next directory has sent nothing yet (a slow start is not a stuck one).
      const second = view.confirmedWithin(1_200, async () => 2n);
      await vi.advanceTimersByTimeAsync(1_200);
      expect(await second).toBe(false);
      expect(streams[1]?.signal?.aborted).toBe(false);
      await vi.advanceTimersByTimeAsync(400);
      expect(streams).toHaveLength(2);
      streams[1]?.push(leaderEntry(2n, 4n, 'directory-0'));
      await vi.advanceTimersByTimeAsync(1);
      expect(await view.confirmedWithin(1_200, async () => 2n)).toBe(true);
    }));

  it('does not leave a directory while reloading a snapshot, keepalives or not', () =>
    withDrivenView(1_000, async ({ streams, view }) => {
      await vi.advanceTimersByTimeAsync(1);
      streams[0]?.push(leaderEntry(1n, 4n, 'directory-0'));
      streams[0]?.push(leaderEntry(2n, 4n, 'directory-0'));
      await vi.advanceTimersByTimeAsync(1);
      expect(view.state.appliedIndex).toBe(2n);
      const snapshot = view.state.toSnapshot();
      // A gap: the view asks for everything again, keeping its old state meanwhile.
      streams[0]?.push(leaderEntry(5n, 4n, 'directory-0'));
      await vi.advanceTimersByTimeAsync(200);
      expect(streams.map((s) => [s.req.fromIndex, s.req.nextSource])).toEqual([
        [0n, false],
        [0n, false],
      ]);
      // The directory builds the snapshot, sending keepalives: the stream is heard.
      streams[1]?.push(keepalive());
      await vi.advanceTimersByTimeAsync(1);
      const during = view.confirmedWithin(1_200, async () => 3n);
      await vi.advanceTimersByTimeAsync(1_200);
      expect(await during).toBe(false);
      expect(streams[1]?.signal?.aborted).toBe(false);
      // Reloading when the leader answered; the snapshot (at 2, the view's index before
      // the wait) arrives during the wait: still not judged.
      const across = view.confirmedWithin(1_200, async () => 3n);
      await vi.advanceTimersByTimeAsync(600);
      streams[1]?.push(create(WatchMetadataResponseSchema, { msg: { case: 'snapshot', value: snapshot } }));
      await vi.advanceTimersByTimeAsync(600);
      expect(await across).toBe(false);
      expect(view.state.appliedIndex).toBe(2n);
      expect(streams[1]?.signal?.aborted).toBe(false);
      await vi.advanceTimersByTimeAsync(400);
      expect(streams).toHaveLength(2);
      streams[1]?.push(leaderEntry(3n, 4n, 'directory-0'));
      await vi.advanceTimersByTimeAsync(1);
      expect(await view.confirmedWithin(1_200, async () => 3n)).toBe(true);
    }));

  it('does not leave a directory when a reload begins during the wait', () =>
    withDrivenView(1_000, async ({ streams, view }) => {
      await vi.advanceTimersByTimeAsync(1);
      streams[0]?.push(leaderEntry(1n, 4n, 'directory-0'));
      streams[0]?.push(leaderEntry(2n, 4n, 'directory-0'));
      await vi.advanceTimersByTimeAsync(1);
      const p = view.confirmedWithin(1_200, async () => 3n);
      await vi.advanceTimersByTimeAsync(1_100);
      // A gap 100 ms before the wait ends: the stream judged is over, its successor
      // (a reload) opens 200 ms later, after the verdict.
      streams[0]?.push(leaderEntry(5n, 4n, 'directory-0'));
      await vi.advanceTimersByTimeAsync(100);
      expect(await p).toBe(false);
      expect(streams).toHaveLength(1);
      await vi.advanceTimersByTimeAsync(200);
      expect(streams.map((s) => [s.req.fromIndex, s.req.nextSource])).toEqual([
        [0n, false],
        [0n, false],
      ]);
    }));

  it('does not drop the newer stream that replaced the one it judged', () =>
    withDrivenView(100, async ({ streams, view }) => {
      await vi.advanceTimersByTimeAsync(1);
      streams[0]?.push(leaderEntry(1n, 4n, 'directory-0'));
      await vi.advanceTimersByTimeAsync(1);
      // The leader is at 2; meanwhile a store names term 5, so after the 100 ms grace
      // the view leaves stream 0 for another directory, which starts slowly.
      const p = view.confirmedWithin(1_200, async () => 2n);
      view.noteStoreTerm(5n);
      await vi.advanceTimersByTimeAsync(300);
      expect(streams[0]?.signal?.aborted).toBe(true);
      expect(streams.map((s) => s.req.nextSource)).toEqual([false, true]);
      streams[1]?.push(keepalive());
      await vi.advanceTimersByTimeAsync(900);
      // The verdict on stream 0 (nothing applied while the leader was ahead) is not
      // held against stream 1: leaving again would bounce off the new directory.
      expect(await p).toBe(false);
      expect(streams[1]?.signal?.aborted).toBe(false);
      await vi.advanceTimersByTimeAsync(400);
      expect(streams).toHaveLength(2);
      streams[1]?.push(leaderEntry(2n, 5n, 'directory-1'));
      await vi.advanceTimersByTimeAsync(1);
      expect(view.leaderTerm).toBe(5n);
      expect(await view.confirmedWithin(1_200, async () => 2n)).toBe(true);
    }));
});
