import { describe, expect, it } from 'vitest';
import {
  ASK_GAP_MS,
  askDirectoryTerms,
  type DirectoryTermAnswer,
  DirectoryTermWitness,
  type TermSource,
} from '../../../internal/store/term-witness.js';

/** An ask that answers `term` from `answered` of `of` directories, counting its rounds. */
function asker(answer: () => DirectoryTermAnswer) {
  const calls: number[] = [];
  return {
    calls,
    ask: async () => {
      calls.push(performance.now());
      await new Promise((r) => setTimeout(r, 5));
      return answer();
    },
  };
}

describe('DirectoryTermWitness: a relayed directory term is acted on only once a directory states it', () => {
  it('confirms a term at or below the highest stated without asking', async () => {
    const a = asker(() => ({ term: 0n, answered: 3, of: 3 }));
    const w = new DirectoryTermWitness(7n, a.ask);
    expect(await w.confirm(7n)).toEqual({ ok: true });
    w.observe(9n);
    expect(await w.confirm(9n)).toEqual({ ok: true });
    expect(a.calls).toHaveLength(0);
  });

  it('confirms a new term once a directory states it, and remembers it', async () => {
    const a = asker(() => ({ term: 12n, answered: 2, of: 3 }));
    const w = new DirectoryTermWitness(7n, a.ask);
    expect(await w.confirm(12n)).toEqual({ ok: true });
    expect(w.highest()).toBe(12n);
    expect(await w.confirm(11n)).toEqual({ ok: true });
    expect(a.calls).toHaveLength(1);
  });

  it('calls a term forged when every directory answers lower, and does not raise what it holds', async () => {
    const a = asker(() => ({ term: 7n, answered: 3, of: 3 }));
    const w = new DirectoryTermWitness(7n, a.ask);
    const v = await w.confirm(1007n);
    expect(v).toMatchObject({ ok: false, reason: 'not-stated', answer: { term: 7n, answered: 3, of: 3 } });
    expect(w.highest()).toBe(7n);
  });

  it('cannot tell when a directory is silent (the winner may be that one): unconfirmed', async () => {
    const a = asker(() => ({ term: 7n, answered: 2, of: 3 }));
    const w = new DirectoryTermWitness(7n, a.ask);
    expect(await w.confirm(8n)).toMatchObject({ ok: false, reason: 'unconfirmed' });
    const failing = new DirectoryTermWitness(7n, () => Promise.reject(new Error('boom')));
    expect(await failing.confirm(8n)).toMatchObject({ ok: false, reason: 'unconfirmed' });
  });

  it('ignores a stated term beyond what Redis represents', () => {
    const w = new DirectoryTermWitness(7n, async () => ({ term: 0n, answered: 0, of: 0 }));
    w.observe(1n << 63n);
    expect(w.highest()).toBe(7n);
  });

  it('a flood of forged terms asks the directories at most once per ASK_GAP_MS, never two rounds at once', async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    const calls: number[] = [];
    const w = new DirectoryTermWitness(7n, async () => {
      calls.push(performance.now());
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise((r) => setTimeout(r, 20));
      inFlight--;
      return { term: 7n, answered: 3, of: 3 };
    });
    const t0 = performance.now();
    const verdicts: Promise<unknown>[] = [];
    while (performance.now() - t0 < 3 * ASK_GAP_MS) {
      for (let i = 0; i < 50; i++) verdicts.push(w.confirm(100n + BigInt(i)));
      await new Promise((r) => setTimeout(r, 10));
    }
    const all = await Promise.all(verdicts);
    const span = performance.now() - t0;
    expect(all.every((v) => (v as { ok: boolean }).ok === false)).toBe(true);
    expect(maxInFlight).toBe(1);
    // Thousands of refused calls, a handful of rounds: one per gap over the flood's span.
    expect(verdicts.length).toBeGreaterThan(1000);
    expect(calls.length).toBeLessThanOrEqual(Math.ceil(span / ASK_GAP_MS) + 1);
    for (let i = 1; i < calls.length; i++) {
      expect((calls[i] as number) - (calls[i - 1] as number)).toBeGreaterThanOrEqual(ASK_GAP_MS - 5);
    }
  });

  it('a round begun before a call is not the answer to it: the call waits for a round of its own', async () => {
    let stated = 7n;
    let release: () => void = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    let rounds = 0;
    const w = new DirectoryTermWitness(7n, async () => {
      rounds++;
      const snapshot = stated;
      if (rounds === 1) await held;
      return { term: snapshot, answered: 3, of: 3 };
    });
    const first = w.confirm(8n); // round 1 asks, sees term 7 (the election of 8 happens after)
    await new Promise((r) => setTimeout(r, 5));
    stated = 8n; // a new leader wins term 8; a gateway relays it at once
    const second = w.confirm(8n);
    release();
    expect(await first).toMatchObject({ ok: false, reason: 'not-stated' });
    expect(await second).toEqual({ ok: true });
    expect(rounds).toBe(2);
  });
});

describe('askDirectoryTerms', () => {
  const source = (term: bigint | 'hang' | 'fail'): TermSource => ({
    getClusterStatus: () =>
      term === 'hang'
        ? new Promise(() => {})
        : term === 'fail'
          ? Promise.reject(new Error('unreachable'))
          : Promise.resolve({ term: 0n, directories: [{ term }] }),
  });

  it('answers as soon as one directory states the wanted term, however long a paused one takes', async () => {
    const a = await askDirectoryTerms([source('hang'), source(12n), source(9n)], () => 12n);
    expect(a.term).toBe(12n);
    expect(a.of).toBe(3);
  });

  it('waits for every directory otherwise, counting only those that answered', async () => {
    const a = await askDirectoryTerms([source('fail'), source(9n), source(7n)], () => 12n);
    expect(a).toEqual({ term: 9n, answered: 2, of: 3 });
  });
});
