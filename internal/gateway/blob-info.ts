import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { type BlobInfo, BlobInfoSchema, StorageTier } from '../../gen/haystack/v1/blob_pb.js';
import { type BlobMeta, BlobMetaSchema, BlobState, type Replica } from '../../gen/haystack/v1/common_pb.js';
import type { NeedleFacts } from '../../gen/haystack/v1/store_pb.js';
import type { CachedBlobMeta } from '../cache/blob-cache.js';
import { validateBlobId } from '../common/blob-id.js';

/** What a blob without a declared type is served as. */
export const DEFAULT_CONTENT_TYPE = 'application/octet-stream';

export const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

export function invalid(msg: string): ConnectError {
  return new ConnectError(msg, Code.InvalidArgument);
}

/**
 * Why a file name cannot be kept, or null: a base name (no / or \\, not . or ..), no control
 * characters, at most 255 bytes of UTF-8 (what file systems allow).
 */
export function fileNameProblem(name: string): string | null {
  if (Buffer.byteLength(name) > 255) return 'is longer than 255 bytes';
  if ([...name].some((c) => c < ' ' || c === '\u007f' || c === '/' || c === '\\'))
    return 'must be a base name without / \\ or control characters';
  if (name === '.' || name === '..') return 'is not a file name';
  return null;
}

export function checkId(id: string): void {
  const problem = validateBlobId(id);
  if (problem) throw invalid(problem);
}

/** The public BlobInfo of a blob's metadata. */
export function toInfo(meta: BlobMeta, replicaCount?: number): BlobInfo {
  return create(BlobInfoSchema, {
    blobId: meta.blobId,
    size: meta.size,
    sha256: hex(meta.sha256),
    contentType: meta.contentType || DEFAULT_CONTENT_TYPE,
    createdAtMs: meta.createdAtMs,
    // A cold blob's members hold stubs, not copies: it has no full replica.
    replicaCount: meta.cold ? 0 : (replicaCount ?? meta.replicas.length),
    targetReplicaCount: meta.targetReplicaCount,
    cookie: meta.cookie,
    fileName: meta.fileName,
    tier: meta.cold ? StorageTier.ERASURE_CODED : StorageTier.REPLICATED,
    dataShards: meta.cold?.layout?.dataShards ?? 0,
    parityShards: meta.cold?.layout?.parityShards ?? 0,
  });
}

/** A blob's metadata from what a store's needle records (placement groups: the store is the record). */
export function metaFromNeedle(n: NeedleFacts, replicas: Replica[], targetReplicaCount: number): BlobMeta {
  return create(BlobMetaSchema, {
    blobId: n.blobId,
    cookie: n.cookie,
    size: n.size,
    sha256: n.sha256,
    contentType: n.contentType || DEFAULT_CONTENT_TYPE,
    fileName: n.fileName,
    replicas,
    targetReplicaCount,
    createdAtMs: n.writtenAtMs,
    state: BlobState.ACTIVE,
    ...(n.cold ? { cold: n.cold } : {}),
  });
}

export function cachedInfo(m: CachedBlobMeta): BlobInfo {
  return create(BlobInfoSchema, {
    blobId: m.blobId,
    size: BigInt(m.size),
    sha256: m.sha256,
    contentType: m.contentType,
    createdAtMs: BigInt(m.createdAtMs),
    replicaCount: m.replicaCount,
    targetReplicaCount: m.targetReplicaCount,
    cookie: m.cookie,
    fileName: m.fileName ?? '',
  });
}

export function cacheMeta(info: BlobInfo): CachedBlobMeta {
  return {
    blobId: info.blobId,
    size: Number(info.size),
    sha256: info.sha256,
    contentType: info.contentType,
    createdAtMs: Number(info.createdAtMs),
    cookie: info.cookie,
    replicaCount: info.replicaCount,
    targetReplicaCount: info.targetReplicaCount,
    ...(info.fileName ? { fileName: info.fileName } : {}),
  };
}
