import type { DownloadOptions, UploadOptions } from '../../internal/sdk/client.js';
import { HaystackClient, NotFoundError } from '../../internal/sdk/index.js';
import type { HistoryOp } from './history.js';
import { sha256hex } from './oplog.js';

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
