import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import type { BlobInfo } from '../../gen/haystack/v1/blob_pb.js';
import { BlobInfoSchema } from '../../gen/haystack/v1/blob_pb.js';
import {
  type BlobMeta,
  type ReplicaLocation,
  ReplicaLocationSchema,
  StoreHealth,
} from '../../gen/haystack/v1/common_pb.js';
import type { BlobCache } from '../cache/blob-cache.js';
import type { Logger } from '../server/logger.js';
import { checkId, hex, toInfo } from './blob-info.js';
import type { DirectoryApi } from './directory.js';
import type { DoneWrite, MetadataPath, WritePlan } from './metadata-path.js';

/**
 * The v1 metadata path: the directory allocates each write, commits it (a majority
 * log entry per blob) and locates each uncached read.
 */
export class DirectoryPath implements MetadataPath {
  /** Highest directory commit index this gateway has seen (read-your-writes on followers). */
  private commitIndex = 0n;
  /** Store id → address, from every answer that named one. */
  private readonly storeAddresses = new Map<string, string>();
  private lastStatusRefresh = 0;

  constructor(
    private readonly directory: DirectoryApi,
    private readonly cache: BlobCache,
    private readonly log: Logger,
  ) {}

  async planWrite(blobId: string, size: bigint, replicaCount: number): Promise<WritePlan> {
    const alloc = await this.directory.allocateWrite({ blobId, size, replicaCount });
    if (alloc.stores.length === 0) throw new ConnectError('the directory allocated no store', Code.Internal);
    return { cookie: alloc.cookie, targets: alloc.stores, term: alloc.term, replicaCount };
  }

  async finishWrite(w: DoneWrite): Promise<BlobInfo> {
    const commit = await this.directory.commitWrite({
      blobId: w.blobId,
      cookie: w.plan.cookie,
      size: w.size,
      sha256: w.sha256,
      contentType: w.contentType,
      fileName: w.fileName,
      replicas: w.written.replicas.map((r) => ({ storeId: r.storeId, volumeId: r.volumeId })),
    });
    this.sawIndex(commit.commitIndex);
    return commit.blob
      ? toInfo(commit.blob)
      : create(BlobInfoSchema, {
          blobId: w.blobId,
          size: w.size,
          sha256: hex(w.sha256),
          contentType: w.contentType,
          createdAtMs: BigInt(Date.now()),
          replicaCount: w.written.replicas.length,
          targetReplicaCount: w.written.replicas.length,
          cookie: w.plan.cookie,
          fileName: w.fileName,
        });
  }

  /** Records a directory commit index and shares it with the other gateways. */
  private sawIndex(index: bigint): void {
    if (index > this.commitIndex) this.commitIndex = index;
    void this.cache.publishCommitIndex(index);
  }

  /**
   * Blob metadata from the directory; NOT_FOUND for unknown or deleted ids. Asks
   * for at least the highest commit index any gateway has seen, so a follower
   * answers only once it knows every write and delete acknowledged so far.
   */
  async locate(blobId: string): Promise<{ meta: BlobMeta; replicas: ReplicaLocation[] }> {
    checkId(blobId);
    const shared = this.cache.sharedCommitIndex();
    let minIndex = this.commitIndex;
    if (shared > minIndex) minIndex = shared; // bigints: no Math.max
    const res = await this.directory.locate({ blobIds: [blobId], minIndex });
    const loc = res.locations[0];
    if (!loc?.found || !loc.blob) throw new ConnectError(`blob ${blobId} not found`, Code.NotFound);
    return { meta: loc.blob, replicas: await this.withRecordedReplicas(loc.blob, loc.replicas) };
  }

  /**
   * The replicas the directory offers (best first), then the blob's other recorded
   * replicas the directory left out. Its health view is advisory: just after an
   * election the new leader has heard no heartbeat yet and offers no store at all,
   * while the stores are up. Those are tried last, at addresses learnt earlier (or
   * from GetClusterStatus).
   */
  private async withRecordedReplicas(meta: BlobMeta, offered: ReplicaLocation[]): Promise<ReplicaLocation[]> {
    for (const r of offered) if (r.address) this.storeAddresses.set(r.storeId, r.address);
    const listed = new Set(offered.map((r) => r.storeId));
    const missing = meta.replicas.filter((r) => !listed.has(r.storeId));
    if (missing.length === 0) return offered;
    if (
      missing.some((r) => !this.storeAddresses.has(r.storeId)) &&
      Date.now() - this.lastStatusRefresh > 2_000
    ) {
      this.lastStatusRefresh = Date.now();
      try {
        const status = await this.directory.getClusterStatus({ localOnly: true });
        for (const st of status.stores) if (st.address) this.storeAddresses.set(st.storeId, st.address);
      } catch (err) {
        this.log.debug({ err: ConnectError.from(err).message }, 'could not learn store addresses');
      }
    }
    const extra = missing
      .filter((r) => this.storeAddresses.has(r.storeId))
      .map((r) =>
        create(ReplicaLocationSchema, {
          storeId: r.storeId,
          address: this.storeAddresses.get(r.storeId) ?? '',
          volumeId: r.volumeId,
          health: StoreHealth.UNSPECIFIED,
        }),
      );
    return [...offered, ...extra];
  }

  async delete(blobId: string): Promise<boolean> {
    // per_blob: a directory that has placement groups refuses it before doing anything.
    const res = await this.directory.delete({ blobId, perBlob: true });
    this.sawIndex(res.commitIndex);
    return res.found;
  }

  async list(
    pageSize: number,
    pageToken: string,
    prefix: string,
  ): Promise<{ blobs: BlobInfo[]; next: string }> {
    const res = await this.directory.list({ pageSize: Math.min(pageSize || 100, 1000), pageToken, prefix });
    return { blobs: res.blobs.map((b) => toInfo(b)), next: res.nextPageToken };
  }
}
