import { create } from '@bufbuild/protobuf';
import { BlobMetaSchema, type StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { type LogEntry, LogEntrySchema, StoreRecordSchema } from '../../gen/haystack/v1/metadata_pb.js';

/** Builders for metadata log entries in unit tests. */
export function blobCommitted(
  index: number,
  term: number,
  id: string,
  stores: string[],
  cookie = 7n,
): LogEntry {
  return create(LogEntrySchema, {
    index: BigInt(index),
    term: BigInt(term),
    timestampMs: 1000n,
    change: {
      case: 'blobCommitted',
      value: {
        blob: create(BlobMetaSchema, {
          blobId: id,
          cookie,
          size: 10n,
          sha256: new Uint8Array(32).fill(1),
          contentType: 'text/plain',
          replicas: stores.map((s, i) => ({ storeId: s, volumeId: i + 1 })),
          targetReplicaCount: stores.length,
          createdAtMs: 1000n,
        }),
      },
    },
  });
}

export function blobDeleted(index: number, term: number, id: string): LogEntry {
  return create(LogEntrySchema, {
    index: BigInt(index),
    term: BigInt(term),
    change: { case: 'blobDeleted', value: { blobId: id } },
  });
}

export function replicasChanged(
  index: number,
  term: number,
  id: string,
  change: { add?: { storeId: string; volumeId: number }[]; remove?: string[]; target?: number },
): LogEntry {
  return create(LogEntrySchema, {
    index: BigInt(index),
    term: BigInt(term),
    change: {
      case: 'replicasChanged',
      value: {
        blobId: id,
        added: change.add ?? [],
        removedStoreIds: change.remove ?? [],
        targetReplicaCount: change.target ?? 0,
      },
    },
  });
}

export function storeRegistered(
  index: number,
  term: number,
  id: string,
  health: StoreHealth,
  zone = '',
): LogEntry {
  return create(LogEntrySchema, {
    index: BigInt(index),
    term: BigInt(term),
    change: {
      case: 'storeRegistered',
      value: {
        store: create(StoreRecordSchema, {
          storeId: id,
          address: `127.0.0.1:${8000 + index}`,
          zone,
          capacityBytes: 1000n,
          freeBytes: 900n,
          health,
        }),
      },
    },
  });
}

export function healthChanged(index: number, term: number, id: string, health: StoreHealth): LogEntry {
  return create(LogEntrySchema, {
    index: BigInt(index),
    term: BigInt(term),
    change: { case: 'storeHealthChanged', value: { storeId: id, health } },
  });
}

export function leaderChanged(index: number, term: number, leader: string): LogEntry {
  return create(LogEntrySchema, {
    index: BigInt(index),
    term: BigInt(term),
    change: { case: 'leaderChanged', value: { leaderId: leader } },
  });
}
