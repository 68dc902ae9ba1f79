import { createHash } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import {
  type BlobInfo,
  type BlobService,
  BlobServiceGetStatsResponseSchema,
  CacheStatsSchema,
  DownloadResponseSchema,
  type UploadRequest,
} from '../../gen/haystack/v1/blob_pb.js';
import { type Grant, listPrefix, requireScope, seesCookies } from '../auth/scopes.js';
import { MAX_URL_TTL_SEC } from '../auth/signed-url.js';
import { type BlobCache, type CacheCounts, hitRate } from '../cache/blob-cache.js';
import { mapErrors } from '../rpc/errors.js';
import { type GatewayAccess, toConnectError } from './access.js';
import { type BlobGateway, invalid } from './blobs.js';
import { checkPutSize } from './put-limit.js';
import type { UrlSigner } from './url-signer.js';

/** Lifetime of a signed URL when the request names none. */
const DEFAULT_URL_TTL_SEC = 3600;

function cacheStats(c: CacheCounts) {
  return create(CacheStatsSchema, { hits: BigInt(c.hits), misses: BigInt(c.misses), hitRate: hitRate(c) });
}

export interface BlobServiceDeps {
  gateway: BlobGateway;
  cache: BlobCache;
  gatewayId: string;
  cacheTtlMs: number;
  /** Who each call is for (bearer tokens, operator certificates). */
  access: GatewayAccess;
  /** Signs read URLs (CreateSignedUrl). */
  urls: UrlSigner;
  /** MAX_PUT_SIZE: content bytes a unary Put may carry (put-limit.ts). */
  maxPutSize: number;
}

/** The info as the grant may see it: the cookie only for admin. */
function shown<T extends BlobInfo | undefined>(g: Grant, info: T): T {
  if (!info || seesCookies(g) || info.cookie === 0n) return info;
  return { ...info, cookie: 0n };
}

/** haystack.v1.BlobService on a BlobGateway. */
export function blobService({
  gateway,
  cache,
  gatewayId,
  cacheTtlMs,
  access,
  urls,
  maxPutSize,
}: BlobServiceDeps): ServiceImpl<typeof BlobService> {
  /** Runs a handler body with the call's grant; refusals and domain errors leave as gRPC statuses. */
  const withGrant = <T>(ctx: HandlerContext, fn: (g: Grant) => Promise<T>): Promise<T> =>
    mapErrors(async () => {
      const g = await access.ofCall(ctx);
      try {
        return await fn(g);
      } catch (err) {
        throw toConnectError(err);
      }
    });
  return {
    async upload(requests: AsyncIterable<UploadRequest>, ctx) {
      return withGrant(ctx, async (g) => {
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
          fileName: h.fileName,
        };
        // Refuse early: before a single content byte is read.
        requireScope(g, 'blob:write', header.blobId);
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
        return { blob: shown(g, blob) };
      });
    },

    async put(req, ctx) {
      return withGrant(ctx, async (g) => {
        const header = {
          blobId: req.blobId,
          size: BigInt(req.data.length),
          contentType: req.contentType,
          sha256: '',
          replicaCount: req.replicaCount,
          fileName: req.fileName,
        };
        gateway.checkHeader(header);
        checkPutSize(maxPutSize, req.data.length);
        if (!req.blobId) {
          header.blobId = createHash('sha256').update(req.data).digest('hex');
        }
        requireScope(g, 'blob:write', header.blobId);
        const blob = await gateway.write(
          header,
          (async function* () {
            yield req.data;
          })(),
          ctx.signal,
        );
        return { blob: shown(g, blob) };
      });
    },

    async *download(req, ctx) {
      let opened: Awaited<ReturnType<BlobGateway['open']>>;
      let g: Grant;
      try {
        g = await access.ofCall(ctx);
        requireScope(g, 'blob:read', req.blobId);
        opened = await gateway.open(req.blobId, req.offset, req.length, ctx.signal);
      } catch (err) {
        throw ConnectError.from(toConnectError(err), Code.Internal);
      }
      yield create(DownloadResponseSchema, { msg: { case: 'info', value: shown(g, opened.info) } });
      for await (const chunk of opened.chunks) {
        yield create(DownloadResponseSchema, { msg: { case: 'chunk', value: chunk } });
      }
    },

    async delete(req, ctx) {
      return withGrant(ctx, async (g) => {
        requireScope(g, 'blob:delete', req.blobId);
        return { found: await gateway.delete(req.blobId) };
      });
    },

    async stat(req, ctx) {
      return withGrant(ctx, async (g) => {
        requireScope(g, 'blob:read', req.blobId);
        return { blob: shown(g, await gateway.stat(req.blobId)) };
      });
    },

    async list(req, ctx) {
      return withGrant(ctx, async (g) => {
        const prefix = listPrefix(g, req.prefix);
        if (req.pageSize > 1000) throw invalid(`page_size ${req.pageSize} is above 1000`);
        const { blobs, next } = await gateway.list(req.pageSize, req.pageToken, prefix);
        return { blobs: blobs.map((b) => shown(g, b)), nextPageToken: next };
      });
    },

    async createSignedUrl(req, ctx) {
      return withGrant(ctx, async (g) => {
        requireScope(g, 'blob:read', req.blobId);
        const ttl = req.ttlSeconds === 0 ? DEFAULT_URL_TTL_SEC : req.ttlSeconds;
        if (ttl > MAX_URL_TTL_SEC) throw invalid(`ttl_seconds ${ttl} is above ${MAX_URL_TTL_SEC} (7 days)`);
        const info = await gateway.stat(req.blobId);
        const expiresAt = Math.floor(Date.now() / 1000) + ttl;
        return { path: urls.sign(info.blobId, info.cookie, expiresAt), expiresAt: BigInt(expiresAt) };
      });
    },

    async getStats(_req, ctx) {
      await withGrant(ctx, async () => undefined);
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
