import type { BlobInfo } from '../../gen/haystack/v1/blob_pb.js';
import type { BlobMeta, ReplicaLocation, StoreTarget } from '../../gen/haystack/v1/common_pb.js';
import type { WriteResponse } from '../../gen/haystack/v1/store_pb.js';

/** Where a new blob goes: the first target receives the stream and forwards it to the rest. */
export interface WritePlan {
  cookie: bigint;
  targets: StoreTarget[];
  /** Fencing term to send to the stores. */
  term: bigint;
  /** Replicas the client asked for (0: the cluster default). */
  replicaCount: number;
  /** Placement groups: members left out of `targets` (JOINING and DOWN), re-checked at ack time. */
  skipped?: string[];
}

/** A write the stores acknowledged, to be recorded (or not) by the metadata path. */
export interface DoneWrite {
  blobId: string;
  size: bigint;
  /** SHA-256 of the content, 32 bytes. */
  sha256: Uint8Array;
  contentType: string;
  /** Original file name, or empty. */
  fileName: string;
  written: WriteResponse;
  plan: WritePlan;
}

/**
 * How a gateway finds and records blobs: through the directory's per-blob records
 * (DirectoryPath, v1 clusters) or by placement group with no directory call on the
 * hot path (GroupPath). BlobGateway streams the bytes either way.
 */
export interface MetadataPath {
  planWrite(blobId: string, size: bigint, replicaCount: number): Promise<WritePlan>;
  /** Called once every target holds the blob durably; answers the blob as stored. */
  finishWrite(w: DoneWrite): Promise<BlobInfo>;
  /** NOT_FOUND for unknown or deleted ids; replicas best first. */
  locate(blobId: string): Promise<{ meta: BlobMeta; replicas: ReplicaLocation[] }>;
  /** True when the blob existed. Answers once the delete is durable. */
  delete(blobId: string): Promise<boolean>;
  list(pageSize: number, pageToken: string, prefix: string): Promise<{ blobs: BlobInfo[]; next: string }>;
}
