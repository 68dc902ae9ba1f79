import { mkdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { create, equals } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { LogEntrySchema, MetadataSnapshotSchema } from '../../../gen/haystack/v1/metadata_pb.js';
import {
  decodeLog,
  decodeSnapshot,
  encodeRecords,
  encodeSnapshot,
  LogCorruptError,
} from '../../../internal/directory/log-codec.js';
import { LogStore } from '../../../internal/directory/log-store.js';
import { MetadataState } from '../../../internal/directory/state-machine.js';
import { createLogger } from '../../../internal/server/logger.js';
import {
  blobCommitted,
  blobDeleted,
  leaderChanged,
  storeRegistered,
} from '../../helpers/directory-entries.js';
import { tmpName } from '../../helpers/tools.js';

const log = createLogger('test', 'log', 'silent');
const sample = () => [
  leaderChanged(1, 1, 'd0'),
  storeRegistered(2, 1, 's1', StoreHealth.HEALTHY),
  blobCommitted(3, 1, 'a', ['s1']),
  blobCommitted(4, 2, 'b', ['s1']),
  blobDeleted(5, 2, 'a'),
];

function sameEntries(a: ReturnType<typeof sample>, b: ReturnType<typeof sample>): boolean {
  return a.length === b.length && a.every((e, i) => equals(LogEntrySchema, e, b[i] as (typeof b)[0]));
}

async function openStore(dir: string): Promise<LogStore> {
  return LogStore.open(dir, log, (err) => {
    throw err;
  });
}

describe('log record codec', () => {
  it('round-trips entries', () => {
    const entries = sample();
    const buf = encodeRecords(entries);
    const d = decodeLog(buf);
    expect(d.tornTail).toBeNull();
    expect(d.validBytes).toBe(buf.length);
    expect(sameEntries(d.entries, entries)).toBe(true);
  });

  it('cuts a torn tail at every possible crash point', () => {
    const entries = sample();
    const buf = encodeRecords(entries);
    const ends = decodeLog(buf).offsets.slice(1).concat(buf.length);
    for (let cut = 0; cut < buf.length; cut++) {
      const d = decodeLog(buf.subarray(0, cut));
      const whole = ends.filter((e) => e <= cut).length;
      expect(d.entries.length).toBe(whole);
      expect(d.tornTail === null).toBe(cut === (whole === 0 ? 0 : ends[whole - 1]));
    }
  });

  it('treats a bad last record as a torn tail and a bad middle record as corruption', () => {
    const buf = encodeRecords(sample());
    const last = Buffer.from(buf);
    last[last.length - 1] = (last[last.length - 1] as number) ^ 0xff;
    expect(decodeLog(last).entries.length).toBe(4);
    expect(decodeLog(last).tornTail).toMatch(/checksum/);
    const mid = Buffer.from(buf);
    mid[14] = (mid[14] as number) ^ 0x01;
    expect(() => decodeLog(mid)).toThrow(LogCorruptError);
    expect(() => decodeLog(mid)).toThrow(/fails its checksum and \d+ bytes follow/);
  });

  it('rejects gaps and term regressions', () => {
    const gap = encodeRecords([blobCommitted(1, 1, 'a', []), blobCommitted(3, 1, 'b', [])]);
    expect(() => decodeLog(gap)).toThrow(/index 3, expected 2/);
    const back = encodeRecords([blobCommitted(1, 2, 'a', []), blobCommitted(2, 1, 'b', [])]);
    expect(() => decodeLog(back)).toThrow(/term 1 after term 2/);
  });

  it('never crashes or hangs on random bytes: a valid prefix or LogCorruptError (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 4096 }), (bytes) => {
        try {
          const d = decodeLog(bytes);
          expect(d.validBytes).toBeLessThanOrEqual(bytes.length);
        } catch (err) {
          expect(err).toBeInstanceOf(LogCorruptError);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('mutated logs yield a prefix of the original entries or a clear error (property)', () => {
    const entries = sample();
    const buf = encodeRecords(entries);
    fc.assert(
      fc.property(
        fc.array(fc.record({ at: fc.nat({ max: buf.length - 1 }), xor: fc.integer({ min: 1, max: 255 }) }), {
          minLength: 1,
          maxLength: 4,
        }),
        fc.nat({ max: buf.length }),
        (flips, cut) => {
          const m = Buffer.from(buf.subarray(0, Math.max(1, cut)));
          for (const f of flips) if (f.at < m.length) m[f.at] = (m[f.at] as number) ^ f.xor;
          try {
            const d = decodeLog(m);
            expect(sameEntries(d.entries, entries.slice(0, d.entries.length))).toBe(true);
          } catch (err) {
            expect(err).toBeInstanceOf(LogCorruptError);
            expect((err as Error).message).toMatch(/metadata log is corrupt: record at byte \d+/);
          }
        },
      ),
      { numRuns: 3000 },
    );
  });
});

describe('snapshot codec', () => {
  const state = new MetadataState();
  for (const e of sample()) state.apply(e);
  const snap = state.toSnapshot();

  it('round-trips', () => {
    expect(equals(MetadataSnapshotSchema, decodeSnapshot(encodeSnapshot(snap)), snap)).toBe(true);
  });

  it('rejects every mutation and random bytes with LogCorruptError (property)', () => {
    const buf = encodeSnapshot(snap);
    fc.assert(
      fc.property(fc.nat({ max: buf.length - 1 }), fc.integer({ min: 1, max: 255 }), (at, xor) => {
        const m = Buffer.from(buf);
        m[at] = (m[at] as number) ^ xor;
        expect(() => decodeSnapshot(m)).toThrow(LogCorruptError);
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.nat({ max: buf.length - 1 }), (cut) => {
        expect(() => decodeSnapshot(buf.subarray(0, cut))).toThrow(/metadata snapshot is corrupt/);
      }),
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
        expect(() => decodeSnapshot(bytes)).toThrow(LogCorruptError);
      }),
    );
  });
});

describe('LogStore on disk', () => {
  it('appends with group-commit fsync and reopens with the same entries', async () => {
    const dir = tmpName('log');
    const s = await openStore(dir);
    const entries = sample();
    s.append(entries.slice(0, 3));
    s.append(entries.slice(3));
    await Promise.all([s.waitDurable(2n), s.waitDurable(5n)]);
    expect(s.durableIndex).toBe(5n);
    expect(s.lastTerm).toBe(2n);
    await s.close();
    const r = await openStore(dir);
    expect(r.lastIndex).toBe(5n);
    expect(sameEntries(r.slice(1n, 10), entries)).toBe(true);
    expect(() => r.append([blobCommitted(7, 2, 'x', [])])).toThrow(/does not follow/);
    await r.close();
  });

  it('cuts a torn tail on restart and keeps appending after it', async () => {
    const dir = tmpName('log');
    const s = await openStore(dir);
    s.append(sample());
    await s.waitDurable(5n);
    await s.close();
    const file = path.join(dir, 'metadata.log');
    truncateSync(file, statSync(file).size - 3);
    const r = await openStore(dir);
    expect(r.lastIndex).toBe(4n);
    r.append([blobCommitted(5, 2, 'z', [])]);
    await r.waitDurable(5n);
    await r.close();
    const again = await openStore(dir);
    expect(again.entry(5n)?.change.case).toBe('blobCommitted');
    await again.close();
  });

  it('refuses to open a log corrupted in the middle, naming the file', async () => {
    const dir = tmpName('log');
    mkdirSync(dir, { recursive: true });
    const buf = encodeRecords(sample());
    buf[20] = (buf[20] as number) ^ 0x55;
    writeFileSync(path.join(dir, 'metadata.log'), buf);
    await expect(openStore(dir)).rejects.toThrow(/metadata\.log: metadata log is corrupt.*Refusing to start/);
  });

  it('truncates a conflicting suffix durably', async () => {
    const dir = tmpName('log');
    const s = await openStore(dir);
    s.append(sample());
    await s.waitDurable(5n);
    await s.truncateFrom(4n);
    expect(s.lastIndex).toBe(3n);
    expect(s.durableIndex).toBe(3n);
    s.append([leaderChanged(4, 3, 'd1')]);
    await s.waitDurable(4n);
    await s.close();
    const r = await openStore(dir);
    expect(r.lastIndex).toBe(4n);
    expect(r.lastTerm).toBe(3n);
    await r.close();
  });

  it('persists the highest term when terms are raised concurrently (no shared temp file race)', async () => {
    const dir = tmpName('log-term');
    mkdirSync(dir, { recursive: true });
    const s = await openStore(dir);
    await Promise.all([s.setCurrentTerm(3n, 'a'), s.setCurrentTerm(5n, 'b'), s.setCurrentTerm(4n, 'c')]);
    await Promise.all([s.setCurrentTerm(6n), s.setCurrentTerm(7n, 'd')]);
    expect(s.currentTerm).toBe(7n);
    await s.close();
    const r = await openStore(dir);
    expect(r.currentTerm).toBe(7n);
    await r.close();
  });

  it('snapshots, compacts the log, and installs a snapshot from a leader', async () => {
    const dir = tmpName('log');
    const s = await openStore(dir);
    const entries = sample();
    s.append(entries);
    await s.waitDurable(5n);
    const st = new MetadataState();
    for (const e of entries.slice(0, 4)) st.apply(e);
    await s.saveSnapshot(st.toSnapshot(), 1);
    expect(s.firstIndex).toBe(4n);
    expect(s.termAt(4n)).toBe(2n);
    s.append([blobCommitted(6, 2, 'c', [])]);
    await s.waitDurable(6n);
    await s.setCurrentTerm(2n);
    await s.close();
    const r = await openStore(dir);
    expect(r.snapshot?.index).toBe(4n);
    expect(r.firstIndex).toBe(4n);
    expect(r.lastIndex).toBe(6n);
    expect(r.currentTerm).toBe(2n);
    // A leader's snapshot far ahead replaces the log.
    const far = create(MetadataSnapshotSchema, { index: 100n, term: 7n });
    await r.installSnapshot(far);
    expect(r.lastIndex).toBe(100n);
    expect(r.lastTerm).toBe(7n);
    expect(r.durableIndex).toBe(100n);
    r.append([leaderChanged(101, 7, 'd2')]);
    await r.waitDurable(101n);
    await r.close();
    const q = await openStore(dir);
    expect(q.firstIndex).toBe(101n);
    expect(q.lastIndex).toBe(101n);
    expect(readFileSync(path.join(dir, 'metadata.snapshot')).subarray(0, 8).toString()).toBe('HAYSNAP1');
    await q.close();
  });
});
