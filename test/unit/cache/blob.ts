import type { BlobCache, CachedBlob } from '../../../internal/cache/blob-cache.js';

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

/** A read-through fill as the gateway does it: the lease on the miss, then the fill under it. */
export async function fill(c: BlobCache, b: CachedBlob): Promise<void> {
  await c.set(b, { lease: await c.lease(b.meta.blobId) });
}

/** A push-on-write as the gateway does it: the write lease before the commit, then the push under it. */
export async function push(c: BlobCache, b: CachedBlob): Promise<void> {
  await c.set(b, { push: await c.writeLease(b.meta.blobId) });
}
