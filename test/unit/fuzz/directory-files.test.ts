import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { create, toBinary } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { MetadataSnapshotSchema } from '../../../gen/haystack/v1/metadata_pb.js';
import {
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

/**
 * Property tests of the directory's on-disk loaders (the codecs alone are fuzzed
 * in test/unit/directory/log.test.ts): LogStore.open on a data directory whose
 * log, snapshot and term files are damaged, and the snapshot loader on payloads
 * that pass the checksum but are not what a directory wrote. No crash, no hang:
 * a log is opened with a prefix of its entries, or refused with a LogCorruptError
 * naming the file.
 */
const log = createLogger('test', 'fuzz', 'silent');
const entries = () => [
  leaderChanged(1, 1, 'd0'),
  storeRegistered(2, 1, 's1', StoreHealth.HEALTHY),
  blobCommitted(3, 1, 'a', ['s1']),
  blobCommitted(4, 2, 'b', ['s1']),
  blobDeleted(5, 2, 'a'),
  blobCommitted(6, 2, 'c', ['s1']),
];

function snapshotBytes(): Buffer {
  const st = new MetadataState();
  for (const e of entries().slice(0, 4)) st.apply(e);
  return encodeSnapshot(st.toSnapshot());
}

async function openDir(files: Record<string, Uint8Array>): Promise<string> {
  const dir = tmpName('fuzz-log');
  mkdirSync(dir, { recursive: true });
  for (const [name, bytes] of Object.entries(files)) writeFileSync(path.join(dir, name), bytes);
  try {
    const s = await LogStore.open(dir, log, (err) => {
      throw err;
    });
    const last = s.lastIndex;
    // Whatever was kept is a prefix of what was written (indexes 1..last, in order).
    for (let i = s.firstIndex; i <= last; i++) expect(s.entry(i)?.index).toBe(i);
    await s.close();
    return `opened ${last}`;
  } catch (e) {
    expect(e, String(e)).toBeInstanceOf(LogCorruptError);
    expect(String((e as Error).message)).toMatch(/metadata\.(log|snapshot)|term\.json/);
    return 'refused';
  }
}

describe('LogStore.open on damaged files', () => {
  it('a log with flipped bytes, truncated, or with junk appended', async () => {
    const good = encodeRecords(entries());
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), { maxLength: 3 }),
        fc.nat(good.length),
        fc.uint8Array({ maxLength: 64 }),
        async (flips, cut, junk) => {
          const b = Buffer.from(good);
          for (const f of flips) {
            const i = f.at % b.length;
            b[i] = (b[i] as number) ^ f.xor;
          }
          await openDir({ 'metadata.log': Buffer.concat([b.subarray(0, cut), junk]) });
        },
      ),
      { numRuns: 150 },
    );
  }, 60_000);

  it('a damaged snapshot or term file next to a good log', async () => {
    const snap = snapshotBytes();
    const logBytes = encodeRecords(entries().slice(3));
    await fc.assert(
      fc.asyncProperty(
        fc.nat(),
        fc.integer({ min: 1, max: 255 }),
        fc.oneof(fc.string({ maxLength: 40 }), fc.constant('{"currentTerm":"7"}')),
        async (at, xor, term) => {
          const s = Buffer.from(snap);
          const i = at % s.length;
          s[i] = (s[i] as number) ^ xor;
          const r = await openDir({
            'metadata.snapshot': s,
            'metadata.log': logBytes,
            'term.json': Buffer.from(term),
          });
          // A flipped snapshot byte is always caught by its checksum.
          expect(r).toBe('refused');
        },
      ),
      { numRuns: 100 },
    );
  }, 60_000);
});

describe('snapshot loader on payloads that pass the checksum', () => {
  it('random protobuf payloads decode to an error or a state, never a crash', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (payload) => {
        const framed = reframe(payload);
        let snap: ReturnType<typeof decodeSnapshot>;
        try {
          snap = decodeSnapshot(framed);
        } catch (e) {
          expect(e).toBeInstanceOf(LogCorruptError);
          return;
        }
        try {
          const st = MetadataState.fromSnapshot(snap);
          expect(st.appliedIndex).toBe(snap.index);
        } catch (e) {
          expect(e).toBeInstanceOf(Error);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('structurally valid snapshots with arbitrary field values load', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            blobId: fc.string({ maxLength: 20 }),
            size: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
            state: fc.integer({ min: 0, max: 5 }),
            stores: fc.array(fc.string({ maxLength: 5 }), { maxLength: 4 }),
          }),
          { maxLength: 20 },
        ),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        (blobs, index) => {
          const snap = create(MetadataSnapshotSchema, {
            index,
            term: 1n,
            blobs: blobs.map((b) => ({
              blobId: b.blobId,
              size: b.size,
              state: b.state,
              replicas: b.stores.map((s) => ({ storeId: s, volumeId: 1 })),
            })),
          });
          const back = decodeSnapshot(encodeSnapshot(snap));
          const st = MetadataState.fromSnapshot(back);
          expect(st.appliedIndex).toBe(index);
        },
      ),
      { numRuns: 500 },
    );
  });
});

/** A snapshot file around `payload` with a correct header and checksum. */
function reframe(payload: Uint8Array): Buffer {
  // encodeSnapshot(x) = header(magic, length, crc32(payload)) + payload: take the
  // header layout from a real one and recompute it for this payload.
  const real = encodeSnapshot(create(MetadataSnapshotSchema, { index: 1n }));
  const payloadLen = toBinary(MetadataSnapshotSchema, create(MetadataSnapshotSchema, { index: 1n })).length;
  const headLen = real.length - payloadLen;
  const head = Buffer.from(real.subarray(0, headLen));
  head.writeUInt32LE(payload.length, headLen - 8);
  head.writeUInt32LE(crc32(payload), headLen - 4);
  return Buffer.concat([head, payload]);
}
