import type { CachedBlob } from '../../../internal/cache/blob-cache.js';

export function blob(id: string, size: number, fill = 1): CachedBlob {
  return {
    meta: {
      blobId: id,
      size,
      sha256: 'ab'.repeat(32),
      contentType: 'image/png',
      createdAtMs: 1_700_000_000_000,
      cookie: 0xfedcba9876543210n,
      replicaCount: 3,
      targetReplicaCount: 3,
    },
    data: new Uint8Array(size).fill(fill),
  };
}
