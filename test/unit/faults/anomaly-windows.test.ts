import { describe, expect, it } from 'vitest';
import type { HistoryOp } from '../../faults/history.js';
import { attributeAnomalies, checkRecorded, RecordingClient } from '../../faults/history-recorder.js';

const op = (
  key: string,
  start: number,
  end: number,
  input: HistoryOp['input'],
  output: HistoryOp['output'],
) => ({ key, input, output, start, end }) as HistoryOp;
const write = (key: string, start: number, end: number) =>
  op(key, start, end, { op: 'write', value: 'v1' }, { result: 'ok' });
const read = (key: string, start: number, end: number, got: string | null) =>
  op(
    key,
    start,
    end,
    { op: 'read' },
    got === null ? { result: 'not-found' } : { result: 'value', value: got },
  );
const del = (key: string, start: number, end: number) =>
  op(key, start, end, { op: 'delete' }, { result: 'ok' });

describe('anomalies attributed to fault windows', () => {
  it('each counts in the window its first offending operation started in, not where its blob began', () => {
    const sdk = new RecordingClient({ url: 'http://127.0.0.1:1' });
    sdk.history.push(
      // Written before the first fault, lost in the first window (100..200).
      write('lost', 0, 10),
      read('lost', 150, 160, null),
      // Written and deleted before the first fault, back in the second window (200..).
      write('back', 0, 10),
      del('back', 20, 30),
      read('back', 250, 260, 'v1'),
      // Read before it was written, before any fault.
      read('early', 50, 55, 'v1'),
      write('early', 60, 70),
      // Linearizable: counted nowhere.
      write('fine', 120, 130),
      read('fine', 210, 220, 'v1'),
    );
    const h = checkRecorded(sdk);
    expect(h.anomalies).toHaveLength(3);
    const reports = [{ anomalies: 0 }, { anomalies: 0 }];
    const before = attributeAnomalies(reports, [100, 200], h.anomalyStarts);
    expect(reports.map((r) => r.anomalies)).toEqual([1, 1]);
    expect(before).toBe(1);
  });
});
