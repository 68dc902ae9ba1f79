import { describe, expect, it } from 'vitest';
import { gatherAnswers } from '../../../internal/directory/gather.js';

const answerIn = <T>(ms: number, v: T): Promise<T> => new Promise((r) => setTimeout(() => r(v), ms));
const failIn = (ms: number): Promise<null> =>
  new Promise((_, reject) => setTimeout(() => reject(new Error('deadline')), ms));

describe('gatherAnswers (a candidate collecting GetLogState answers)', () => {
  it('waits past the grace for a majority that answers late (a loaded peer)', async () => {
    // 'a' answers after the grace: it is there only because the gather waited for it.
    const out = await gatherAnswers([answerIn(150, 'a'), failIn(20)], 1, 30);
    expect(out).toEqual(['a', null]);
  });

  it('stops at the grace once a majority answered, not at the slowest deadline', async () => {
    const t0 = performance.now();
    const out = await gatherAnswers([answerIn(5, 'a'), answerIn(20_000, 'b')], 1, 50);
    expect(out).toEqual(['a', null]);
    expect(performance.now() - t0).toBeLessThan(10_000);
  });

  it('returns at once when every call has settled, failures as null', async () => {
    const t0 = performance.now();
    const out = await gatherAnswers([answerIn(5, 'a'), failIn(5), Promise.resolve(null)], 2, 20_000);
    expect(out).toEqual(['a', null, null]);
    expect(performance.now() - t0).toBeLessThan(10_000);
  });

  it('stops as soon as a majority is out of reach, not at the slowest deadline', async () => {
    const t0 = performance.now();
    // Two of three needed; two fail at once: the third cannot make a majority.
    const out = await gatherAnswers([failIn(5), answerIn(20_000, 'b'), failIn(5)], 2, 20_000);
    expect(out).toEqual([null, null, null]);
    expect(performance.now() - t0).toBeLessThan(10_000);
  });

  it('handles no peers (a single instance)', async () => {
    expect(await gatherAnswers([], 0, 10)).toEqual([]);
  });
});
