import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { BlobState, StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import {
  type LogEntry,
  LogEntrySchema,
  MetadataSnapshotSchema,
} from '../../../gen/haystack/v1/metadata_pb.js';
import { LogGapError, MetadataMirror } from '../../../internal/replication/mirror.js';

let idx = 0n;
function entry(change: MessageInitShape<typeof LogEntrySchema>['change']): LogEntry {
  idx++;
  return create(LogEntrySchema, { index: idx, term: 1n, change });
}

describe('MetadataMirror', () => {
  it('follows blob and store changes and indexes blobs by store', () => {
    idx = 0n;
    const m = new MetadataMirror();
    m.apply(
      entry({
        case: 'storeRegistered',
        value: { store: { storeId: 's1', address: 'h:1', zone: 'a', health: StoreHealth.HEALTHY } },
      }),
    );
    m.apply(
      entry({
        case: 'storeRegistered',
        value: { store: { storeId: 's2', address: 'h:2', zone: 'b', health: StoreHealth.HEALTHY } },
      }),
    );
    expect(m.loaded).toBe(true);
    m.apply(
      entry({
        case: 'blobCommitted',
        value: {
          blob: {
            blobId: 'x',
            size: 10n,
            targetReplicaCount: 3,
            state: BlobState.ACTIVE,
            replicas: [{ storeId: 's1', volumeId: 1 }],
          },
        },
      }),
    );
    expect(m.blob('x')?.version).toBe(3n);
    expect(m.blobsOn('s1')).toEqual(['x']);
    const ch = m.apply(
      entry({
        case: 'replicasChanged',
        value: {
          blobId: 'x',
          added: [{ storeId: 's2', volumeId: 4 }],
          removedStoreIds: ['s1'],
          targetReplicaCount: 5,
        },
      }),
    );
    expect(ch).toEqual({ type: 'blob', blobId: 'x' });
    expect(m.blob('x')).toMatchObject({
      targetReplicaCount: 5,
      version: 4n,
      replicas: [{ storeId: 's2', volumeId: 4 }],
    });
    expect(m.blobsOn('s1')).toEqual([]);
    expect(m.blobsOn('s2')).toEqual(['x']);
    expect(
      m.apply(entry({ case: 'storeHealthChanged', value: { storeId: 's2', health: StoreHealth.DOWN } })),
    ).toEqual({
      type: 'store',
      storeId: 's2',
      previous: StoreHealth.HEALTHY,
      health: StoreHealth.DOWN,
    });
    expect(m.apply(entry({ case: 'blobDeleted', value: { blobId: 'x' } }))).toEqual({
      type: 'blob-deleted',
      blobId: 'x',
      storeIds: ['s2'],
    });
    expect(m.blob('x')).toBeUndefined();
    expect(m.liveCount).toBe(0);
    expect(m.blobsOn('s2')).toEqual([]);
    expect(m.appliedIndex).toBe(6n);
  });

  it('ignores entries it has and refuses a gap', () => {
    const m = new MetadataMirror();
    m.applySnapshot(
      create(MetadataSnapshotSchema, {
        index: 10n,
        term: 2n,
        blobs: [
          { blobId: 'a', state: BlobState.ACTIVE },
          { blobId: 'd', state: BlobState.DELETED },
        ],
      }),
    );
    expect([...m.liveBlobs()].map((b) => b.blobId)).toEqual(['a']);
    expect(
      m.apply(create(LogEntrySchema, { index: 9n, change: { case: 'blobDeleted', value: { blobId: 'a' } } })),
    ).toEqual({ type: 'none' });
    expect(() => m.apply(create(LogEntrySchema, { index: 12n }))).toThrow(LogGapError);
    m.apply(
      create(LogEntrySchema, { index: 11n, change: { case: 'leaderChanged', value: { leaderId: 'd1' } } }),
    );
    expect(m.appliedIndex).toBe(11n);
  });
});
