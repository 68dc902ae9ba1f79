import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  checkHistory,
  checkKey,
  describeAnomaly,
  type HistoryOp,
  type OpInput,
  type OpOutput,
  type RegState,
  step,
} from '../../faults/history.js';

const K = 'blob-1';
const w = (start: number, end: number, value = 'v1', result: OpOutput['result'] = 'ok'): HistoryOp => ({
  key: K,
  input: { op: 'write', value },
  output: result === 'ok' ? { result: 'ok' } : { result: 'unknown' },
  start,
  end,
});
const r = (start: number, end: number, got: string | null): HistoryOp => ({
  key: K,
  input: { op: 'read' },
  output: got === null ? { result: 'not-found' } : { result: 'value', value: got },
  start,
  end,
});
const d = (start: number, end: number, result: OpOutput['result'] = 'ok'): HistoryOp => ({
  key: K,
  input: { op: 'delete' },
  output: { result } as OpOutput,
  start,
  end,
});

describe('history checker: known-bad histories are refused, with the anomaly', () => {
  it('a read after an acknowledged delete that returns the bytes (resurrection)', () => {
    const v = checkKey(K, [w(0, 10), d(20, 30), r(40, 50, 'v1')]);
    expect(v.ok).toBe(false);
    const text = describeAnomaly(v);
    expect(text).toContain('not linearizable');
    expect(text).toMatch(/no valid place for:\n.*read\(\) → v1/);
  });

  it('a read after an acknowledged write that answers NOT_FOUND (lost or stale)', () => {
    expect(checkKey(K, [w(0, 10), r(20, 30, null)]).ok).toBe(false);
  });

  it('a read that returns bytes before the write was invoked', () => {
    expect(checkKey(K, [r(0, 5, 'v1'), w(10, 20)]).ok).toBe(false);
  });

  it('a read of other bytes than were ever written', () => {
    expect(checkKey(K, [w(0, 10), r(20, 30, 'v2')]).ok).toBe(false);
  });

  it('reads that go back in time: one sees the delete, a later one the blob again', () => {
    // The delete is still in flight: either read alone is fine, both in this order are not.
    expect(checkKey(K, [w(0, 10), d(20, 100), r(30, 40, null), r(50, 60, 'v1')]).ok).toBe(false);
  });

  it('a second value under a write-once id', () => {
    expect(checkKey(K, [w(0, 10, 'v1'), w(20, 30, 'v2')]).ok).toBe(false);
  });

  it('an acknowledged delete of a blob that was never written', () => {
    expect(checkKey(K, [d(0, 10)]).ok).toBe(false);
  });

  it('checkHistory reports only the bad blob among good ones', () => {
    const good = [w(0, 10), r(20, 30, 'v1')].map((o) => ({ ...o, key: 'good' }));
    const bad = [w(0, 10), d(20, 30), r(40, 50, 'v1')];
    const res = checkHistory([...good, ...bad]);
    expect(res.keys).toBe(2);
    expect(res.anomalies.map((a) => a.key)).toEqual([K]);
  });
});

describe('history checker: valid histories are accepted', () => {
  it('reads concurrent with a write see either outcome', () => {
    expect(checkKey(K, [w(0, 100), r(10, 20, null), r(30, 40, 'v1'), r(110, 120, 'v1')]).ok).toBe(true);
  });

  it('reads concurrent with a delete see either outcome, then NOT_FOUND', () => {
    expect(checkKey(K, [w(0, 10), d(20, 100), r(30, 40, 'v1'), r(50, 60, null), r(110, 120, null)]).ok).toBe(
      true,
    );
  });

  it('a write of unknown outcome may appear any time after its invocation, or never', () => {
    expect(checkKey(K, [w(0, 10, 'v1', 'unknown'), r(20, 30, null), r(500, 510, 'v1')]).ok).toBe(true);
    expect(checkKey(K, [w(0, 10, 'v1', 'unknown'), r(20, 30, null), r(500, 510, null)]).ok).toBe(true);
    // ...but not before it was invoked.
    expect(checkKey(K, [r(0, 5, 'v1'), w(10, 20, 'v1', 'unknown')]).ok).toBe(false);
  });

  it('a delete of unknown outcome may or may not have removed the blob', () => {
    expect(checkKey(K, [w(0, 10), d(20, 30, 'unknown'), r(40, 50, 'v1')]).ok).toBe(true);
    expect(checkKey(K, [w(0, 10), d(20, 30, 'unknown'), r(40, 50, null)]).ok).toBe(true);
    // Once gone it stays gone.
    expect(checkKey(K, [w(0, 10), d(20, 30, 'unknown'), r(40, 50, null), r(60, 70, 'v1')]).ok).toBe(false);
  });

  it('a delete answered "there was none" (a retry after its own first attempt) leaves the blob gone', () => {
    expect(checkKey(K, [w(0, 10), d(20, 30, 'gone'), r(40, 50, null)]).ok).toBe(true);
    expect(checkKey(K, [w(0, 10), d(20, 30, 'gone'), r(40, 50, 'v1')]).ok).toBe(false);
  });

  it('an idempotent retry of the same write', () => {
    expect(checkKey(K, [w(0, 10), w(5, 20), r(30, 40, 'v1')]).ok).toBe(true);
  });

  it('any history produced by running the model sequentially (with overlap) is accepted', () => {
    const opArb = fc.oneof(
      fc.constant<OpInput>({ op: 'write', value: 'v1' }),
      fc.constant<OpInput>({ op: 'read' }),
      fc.constant<OpInput>({ op: 'delete' }),
    );
    fc.assert(
      fc.property(fc.array(fc.tuple(opArb, fc.nat(20), fc.nat(20)), { maxLength: 25 }), (steps) => {
        // Each op takes effect at time 100·i; its call and return are spread around that point,
        // so neighbours overlap but the effect order is real-time consistent.
        let s: RegState = { kind: 'absent' };
        const ops: HistoryOp[] = [];
        steps.forEach(([input, before, after], i) => {
          const at = 100 * (i + 1);
          let output: OpOutput;
          if (input.op === 'read')
            output = s.kind === 'present' ? { result: 'value', value: s.value } : { result: 'not-found' };
          else if (input.op === 'delete')
            output = s.kind === 'present' ? { result: 'ok' } : { result: 'gone' };
          else if (s.kind === 'present')
            return; // write-once: the model refuses a rewrite
          else output = { result: 'ok' };
          const next = step(s, input, output);
          if (!next) throw new Error('model refused its own step');
          s = next;
          ops.push({ key: K, input, output, start: at - 40 - before, end: at + 40 + after });
        });
        return checkKey(K, ops).ok;
      }),
      { numRuns: 300 },
    );
  });
});
