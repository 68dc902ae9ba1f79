import { createHash } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import {
  type BlobService,
  BlobServiceGetStatsResponseSchema,
  CacheStatsSchema,
  DownloadResponseSchema,
  type UploadRequest,
} from '../../gen/haystack/v1/blob_pb.js';
import { type BlobCache, type CacheCounts, hitRate } from '../cache/blob-cache.js';
import { mapErrors } from '../rpc/errors.js';
import { type BlobGateway, invalid } from './blobs.js';

function cacheStats(c: CacheCounts) {
  return create(CacheStatsSchema, { hits: BigInt(c.hits), misses: BigInt(c.misses), hitRate: hitRate(c) });
}

export interface BlobServiceDeps {
  gateway: BlobGateway;
  cache: BlobCache;
  gatewayId: string;
  cacheTtlMs: number;
}

/** haystack.v1.BlobService on a BlobGateway. */
export function blobService({
  gateway,
  cache,
  gatewayId,
  cacheTtlMs,
}: BlobServiceDeps): ServiceImpl<typeof BlobService> {
  return {
    async upload(requests: AsyncIterable<UploadRequest>, ctx) {
      return mapErrors(async () => {
        const it = requests[Symbol.asyncIterator]();
        const first = await it.next();
        if (first.done) throw invalid('empty Upload stream: the first message must be an UploadHeader');
        if (first.value.msg.case !== 'header')
          throw invalid('the first Upload message must be an UploadHeader');
        const h = first.value.msg.value;
        const header = {
          blobId: h.blobId,
          size: h.size,
          contentType: h.contentType,
          sha256: h.sha256,
          replicaCount: h.replicaCount,
        };
        // Refuse early: before a single content byte is read.
        gateway.checkHeader(header);
        async function* chunks(): AsyncGenerator<Uint8Array> {
          for (;;) {
            const r = await it.next();
            if (r.done) return;
            if (r.value.msg.case === 'header') throw invalid('UploadHeader sent twice');
            if (r.value.msg.case === 'chunk') yield r.value.msg.value;
          }
        }
        const blob = await gateway.write(header, chunks(), ctx.signal);
        return { blob };
      });
    },

    async put(req, ctx) {
      return mapErrors(async () => {
        const header = {
          blobId: req.blobId,
          size: BigInt(req.data.length),
          contentType: req.contentType,
          sha256: '',
          replicaCount: req.replicaCount,
        };
        gateway.checkHeader(header);
        if (!req.blobId) {
          header.blobId = createHash('sha256').update(req.data).digest('hex');
        }
        const blob = await gateway.write(
          header,
          (async function* () {
            yield req.data;
          })(),
          ctx.signal,
        );
        return { blob };
      });
    },

    async *download(req, ctx) {
      let opened: Awaited<ReturnType<BlobGateway['open']>>;
      try {
        opened = await gateway.open(req.blobId, Number(req.offset), Number(req.length), ctx.signal);
      } catch (err) {
        throw ConnectError.from(err, Code.Internal);
      }
      yield create(DownloadResponseSchema, { msg: { case: 'info', value: opened.info } });
      for await (const chunk of opened.chunks) {
        yield create(DownloadResponseSchema, { msg: { case: 'chunk', value: chunk } });
      }
    },

    async delete(req) {
      return mapErrors(async () => ({ found: await gateway.delete(req.blobId) }));
    },

    async stat(req) {
      return mapErrors(async () => ({ blob: await gateway.stat(req.blobId) }));
    },

    async list(req) {
      return mapErrors(async () => {
        if (req.pageSize > 1000) throw invalid(`page_size ${req.pageSize} is above 1000`);
        const { blobs, next } = await gateway.list(req.pageSize, req.pageToken, req.prefix);
        return { blobs, nextPageToken: next };
      });
    },

    async getStats() {
      const s = await cache.stats();
      return create(BlobServiceGetStatsResponseSchema, {
        gatewayId,
        cacheBackend: s.backend,
        cacheAvailable: s.available,
        gateway: cacheStats(s.local),
        cluster: cacheStats(s.cluster),
        maxUploadSize: BigInt(gateway.maxUploadSize),
        cacheMaxBlobSize: BigInt(cache.maxBlobSize),
        cacheTtlMs: BigInt(cacheTtlMs),
      });
    },
  };
}
