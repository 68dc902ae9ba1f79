// The workloads bench/directory-bench.ts loads into the directory's state: a state
// (wrapped in one small interface: apply a log entry through the real apply path,
// encode a snapshot, restore from one) and the log entries a cluster that stores one
// more blob per entry would produce.
//   v1         per-blob records (PLACEMENT_GROUPS=0): one BlobCommitted per blob stored
//   placement  placement groups (PLACEMENT_GROUPS>0, issue 11): the directory keeps no
//              per-blob record; its log carries the placement (65 536 groups × 3 of 30
//              stores), store health changes, group member changes, and hot blobs' extra
//              replicas over a rolling hot set (each blob raised once and cooled again
//              200 000 entries later: ~100 000 hot), one such entry per blob stored
import { createHash, randomBytes } from 'node:crypto';
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { BlobMetaSchema, StoreHealth } from '../gen/haystack/v1/common_pb.js';
import { type LogEntry, LogEntrySchema, PlacementMemberState } from '../gen/haystack/v1/metadata_pb.js';
import { MAX_PLACEMENT_GROUPS } from '../internal/common/placement.js';
import { decodeSnapshot, encodeSnapshot } from '../internal/directory/log-codec.js';
import { MetadataState } from '../internal/directory/state-machine.js';

/** A directory state under test. */
export interface StateUnderTest {
  /** Applies the next log entry (its index follows the last one applied). */
  apply(entry: LogEntry): void;
  /** The state as the bytes the directory writes for a snapshot. */
  snapshot(): Uint8Array;
  /** A fresh state rebuilt from snapshot() bytes (what a restart does before replaying the log). */
  restore(bytes: Uint8Array): StateUnderTest;
}

export interface Workload {
  describe: string;
  make(): StateUnderTest;
  /** Log entry number `i` (index i + 1); entry i stands for blob number i stored. */
  entry(i: number): LogEntry;
}

/** MetadataState (internal/directory/state-machine.ts), the directory's replicated state. */
function metadataState(s = new MetadataState()): StateUnderTest {
  return {
    apply: (e) => s.apply(e),
    snapshot: () => encodeSnapshot(s.toSnapshot()),
    restore: (bytes) => metadataState(MetadataState.fromSnapshot(decodeSnapshot(bytes))),
  };
}

const STORES = Array.from({ length: 30 }, (_, k) => `store-${k}`);
const entry = (i: number, change: MessageInitShape<typeof LogEntrySchema>['change']): LogEntry =>
  create(LogEntrySchema, {
    index: BigInt(i + 1),
    term: 1n,
    timestampMs: BigInt(1_700_000_000_000 + i),
    change,
  });

/** One BlobCommitted: a random 16-byte id in base64url (as gateways mint them), 3 replicas. */
function blobCommitted(i: number): LogEntry {
  const r = randomBytes(48);
  return entry(i, {
    case: 'blobCommitted',
    value: {
      blob: create(BlobMetaSchema, {
        blobId: r.subarray(0, 16).toString('base64url'),
        cookie: r.readBigUInt64LE(16),
        size: BigInt(20_000 + (i % 200_000)),
        sha256: r.subarray(16, 48),
        contentType: 'image/jpeg',
        replicas: [0, 1, 2].map((k) => ({ storeId: STORES[(i + k) % 6] as string, volumeId: 1 + (i % 64) })),
        targetReplicaCount: 3,
        createdAtMs: BigInt(1_700_000_000_000 + i),
      }),
    },
  });
}

const GROUPS = MAX_PLACEMENT_GROUPS;
const HOT_SET = 100_000;
const members = (g: number, shift = 0) =>
  [0, 1, 2].map((k) => ({
    storeId: STORES[(g * 3 + k * 7 + shift) % STORES.length] as string,
    state: PlacementMemberState.ACTIVE,
  }));
/** Blob number h's id: 16 bytes of a hash of h in base64url. */
const hotId = (h: number) =>
  createHash('sha1').update(`blob-${h}`).digest().subarray(0, 16).toString('base64url');

/** The placement workload's entry i (see the file comment). */
function placementEntry(i: number): LogEntry {
  if (i === 0) {
    return entry(i, {
      case: 'placementChanged',
      value: {
        groupCount: GROUPS,
        groups: Array.from({ length: GROUPS }, (_, g) => ({ group: g, members: members(g) })),
      },
    });
  }
  if (i % 10_000 === 0) {
    // A group gets a replacement member (a store was lost somewhere).
    const g = (i / 10_000) % GROUPS;
    return entry(i, { case: 'placementChanged', value: { groups: [{ group: g, members: members(g, i) }] } });
  }
  if (i % 1000 === 0) {
    const health = (i / 1000) % 2 ? StoreHealth.DEGRADED : StoreHealth.HEALTHY;
    return entry(i, {
      case: 'storeHealthChanged',
      value: { storeId: STORES[i % STORES.length] as string, health },
    });
  }
  // Even i raises blob i (one extra replica, target 4); odd i cools the blob raised
  // 2 × HOT_SET entries earlier (clear), so about HOT_SET blobs are hot at any time.
  if (i % 2 === 1) {
    return entry(i, {
      case: 'extraReplicasChanged',
      value: { blobId: hotId(i - 1 - 2 * HOT_SET), clear: true },
    });
  }
  return entry(i, {
    case: 'extraReplicasChanged',
    value: {
      blobId: hotId(i),
      added: [{ storeId: STORES[(i * 11) % STORES.length] as string, volumeId: 1 + (i % 64) }],
      targetReplicaCount: 4,
    },
  });
}

export const WORKLOADS: Record<string, Workload> = {
  placement: {
    describe:
      'MetadataState with placement groups (65,536 groups × 3 of 30 stores): per blob stored, one log entry among ' +
      'hot-set ExtraReplicasChanged (raise/cool, ~100k hot), store health and group member changes; no per-blob record',
    make: () => metadataState(),
    entry: placementEntry,
  },
  v1: {
    describe:
      'MetadataState with per-blob records (PLACEMENT_GROUPS=0): one BlobCommitted per blob stored, random ids',
    make: () => metadataState(),
    entry: blobCommitted,
  },
};
