import { setTimeout as sleep } from 'node:timers/promises';
import type { DownloadOptions, UploadOptions } from '../../internal/sdk/client.js';
import { HaystackClient, NotFoundError } from '../../internal/sdk/index.js';
import { checkHistory, describeAnomaly, type HistoryOp } from './history.js';
import { type OpLog, sha256hex } from './oplog.js';

type UploadSource = Parameters<HaystackClient['upload']>[0];

/**
 * An SDK client that records every call it makes as a HistoryOp (invocation and
 * completion by Date.now()) for the linearizability checker (history.ts). Writes
 * are keyed by their id, which the load makes the SHA-256 of the bytes
 * (content-addressed), so a write's value is its id.
 */
export class RecordingClient extends HaystackClient {
  readonly history: HistoryOp[] = [];

  override async upload(source: UploadSource, opts: UploadOptions = {}) {
    const value = opts.sha256 ?? '';
    const start = Date.now();
    try {
      const b = await super.upload(source, opts);
      this.history.push({
        key: b.id,
        input: { op: 'write', value: b.sha256 },
        output: { result: 'ok' },
        start,
        end: Date.now(),
      });
      return b;
    } catch (err) {
      if (value) {
        this.history.push({
          key: value,
          input: { op: 'write', value },
          output: { result: 'unknown' },
          start,
          end: Date.now(),
        });
      }
      throw err;
    }
  }

  override async download(id: string, opts: DownloadOptions = {}) {
    const start = Date.now();
    try {
      const r = await super.download(id, opts);
      const value = sha256hex(r.data);
      this.history.push({
        key: id,
        input: { op: 'read' },
        output: { result: 'value', value },
        start,
        end: Date.now(),
      });
      return r;
    } catch (err) {
      // A read that failed otherwise says nothing (the checker drops it).
      const output =
        err instanceof NotFoundError ? ({ result: 'not-found' } as const) : ({ result: 'unknown' } as const);
      this.history.push({ key: id, input: { op: 'read' }, output, start, end: Date.now() });
      throw err;
    }
  }

  override async delete(id: string, opts: Parameters<HaystackClient['delete']>[1] = {}) {
    const start = Date.now();
    try {
      const found = await super.delete(id, opts);
      this.history.push({
        key: id,
        input: { op: 'delete' },
        output: { result: found ? 'ok' : 'gone' },
        start,
        end: Date.now(),
      });
      return found;
    } catch (err) {
      this.history.push({
        key: id,
        input: { op: 'delete' },
        output: { result: 'unknown' },
        start,
        end: Date.now(),
      });
      throw err;
    }
  }
}

/**
 * Reads of any blob the load has touched (acknowledged, in flight, being or already
 * deleted) through the recording SDK, until `until()`: the history checker's view
 * of reads that race writes and deletes (the load's own readers only read blobs
 * never deleted). Used by the kill/pause runs (run.ts) and the partition runs
 * (test/netns/partitions.ts).
 */
export function startProber(sdk: RecordingClient, oplog: OpLog, until: () => boolean): Promise<void> {
  let seed = 7;
  const rand = () => {
    seed = (seed * 1_103_515_245 + 12_345) >>> 0;
    return seed / 2 ** 32;
  };
  return (async () => {
    while (!until()) {
      const ids = [...oplog.blobs.keys()];
      const id = ids[Math.floor(rand() * ids.length)];
      if (!id) {
        await sleep(50);
        continue;
      }
      await sdk.download(id, { timeoutMs: 10_000 }).catch(() => undefined);
      await sleep(20);
    }
  })();
}

/** What a run's history check found: operations and blobs checked, each anomaly described. */
export interface HistorySummary {
  ops: number;
  keys: number;
  anomalies: string[];
  /**
   * Per anomaly (same order): when its first offending operation started (ms, the
   * earliest start among the operations the search could not place), so each can be
   * attributed to the fault window it began in (attributeAnomalies, run.ts).
   */
  anomalyStarts: number[];
}

/** The linearizability check of everything `sdk` recorded, anomalies as describeAnomaly prints them. */
export function checkRecorded(sdk: RecordingClient): HistorySummary {
  const h = checkHistory(sdk.history);
  return {
    ops: h.ops,
    keys: h.keys,
    anomalies: h.anomalies.map(describeAnomaly),
    anomalyStarts: h.anomalies.map((v) =>
      Math.min(...(v.stuckAt?.length ? v.stuckAt : v.ops).map((o) => o.start)),
    ),
  };
}

/**
 * Counts each anomaly in the report of the fault window its first offending operation
 * started in (`starts`: HistorySummary.anomalyStarts; `windows[i]` starts reports[i],
 * as in windowStats, run.ts); returns how many started before the first fault.
 */
export function attributeAnomalies(
  reports: { anomalies: number }[],
  windows: number[],
  starts: number[],
): number {
  let before = 0;
  for (const r of reports) r.anomalies = 0;
  for (const t of starts) {
    const r = reports[windows.findLastIndex((w) => w <= t)];
    if (r) r.anomalies++;
    else before++;
  }
  return before;
}
