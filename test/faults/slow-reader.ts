import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { createClient } from '@connectrpc/connect';
import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { createDirectGrpcTransport } from '../../internal/rpc/direct-transport.js';
import { NotFoundError } from '../../internal/sdk/index.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { redisClient } from '../helpers/redis.js';
import type { RecordingClient } from './history-recorder.js';
import { type OpLog, sha256hex } from './oplog.js';

/**
 * Large enough that a download stalls on HTTP/2 flow control mid-blob (the direct
 * transport stops reading at 16 buffered messages; the mesh's windows are 4 MiB), so
 * the gateway's read-through fill is decided only after the reader resumes: after the
 * delete. The gateways under test must cache blobs this large (SLOW_READER_GATEWAY_ENV).
 */
export const SLOW_READ_BYTES = 24 * 1024 * 1024;

/** What a cluster's gateways need for the slow reader's blobs to be uploaded and cached. */
export const SLOW_READER_GATEWAY_ENV = { CACHE_MAX_BLOB_SIZE: '32MiB', MAX_UPLOAD_SIZE: '64MiB' };

export interface SlowReaderTarget {
  /** Addresses of the gateways, read directly (not through Envoy, which would buffer the body). */
  gateways: () => string[];
  security: TransportSecurity;
  /** The blob cache's Redis (the reader evicts what push-on-write cached, so its read is a miss). */
  cacheRedisUrl: string;
}

export interface SlowReaderStats {
  /** Cycles whose delete was acknowledged while the read was stalled mid-blob. */
  raced: number;
  /** Of those, reads that then completed in full (the gateway reached its fill decision). */
  completed: number;
  /** Reads after the acknowledged delete that were served the deleted bytes (must be 0). */
  resurrected: string[];
}

/**
 * Issue 14's slow reader, run beside every fault: a download of a blob not in the
 * cache begins on a gateway, stalls after its first message, the blob is deleted
 * (acknowledged), the reader waits `pauseMs`, then reads to the end, so the gateway's
 * read-through cache fill comes after the delete. Then the blob is read again through
 * the recording SDK: anything but NOT_FOUND is a resurrection, counted here and (being
 * in the recorded history) reported by the linearizability check as well. Writes and
 * deletes go through the recording SDK and the op log like the load's, so the final
 * check also proves every holder dropped the blob. Runs until `until()`.
 */
export function startSlowReader(
  sdk: RecordingClient,
  oplog: OpLog,
  target: SlowReaderTarget,
  until: () => boolean,
  o: { pauseMs?: number; log?: (line: string) => void } = {},
): { done: Promise<SlowReaderStats> } {
  const stats: SlowReaderStats = { raced: 0, completed: 0, resurrected: [] };
  const redis = redisClient(target.cacheRedisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  let n = 0;
  const cycle = async () => {
    const data = randomBytes(SLOW_READ_BYTES);
    const sha = sha256hex(data);
    // Doomed, and taken off the load's delete list at once: this reader deletes it.
    oplog.beginWrite(sha, sha, data.length, true);
    try {
      await sdk.upload(data, { sha256: sha, timeoutMs: 60_000 });
      oplog.endWrite(sha, true);
    } catch {
      oplog.endWrite(sha, false);
      return;
    }
    oplog.beginDelete(sha);
    await redis.del(`haystack:blob:${sha}`);
    const gateways = target.gateways();
    const reader = createClient(
      BlobService,
      createDirectGrpcTransport({
        address: gateways[n++ % gateways.length] ?? '',
        security: target.security,
        serverRoles: ['gateway'],
      }),
    );
    const abort = new AbortController();
    const d = reader.download({ blobId: sha }, { signal: abort.signal })[Symbol.asyncIterator]();
    const first = await d.next().catch(() => undefined);
    if (first?.value?.msg.case !== 'info') {
      abort.abort();
      await deleteRecorded(sdk, oplog, sha);
      return;
    }
    if (!(await deleteRecorded(sdk, oplog, sha))) {
      abort.abort();
      return;
    }
    stats.raced++;
    await sleep(o.pauseMs ?? 2_000);
    let received = 0;
    try {
      for (let m = await d.next(); !m.done; m = await d.next())
        if (m.value.msg.case === 'chunk') received += m.value.msg.value.length;
      if (received === data.length) stats.completed++;
    } catch {
      // A fault may end the read (a gateway or store killed): the fill decision is then not reached.
    }
    // Give a fill, if any, time to land; then every read must be NOT_FOUND.
    await sleep(300);
    const after = await sdk.download(sha, { timeoutMs: 60_000 }).then(
      (r) => (sha256hex(r.data) === sha ? 'served' : 'other bytes'),
      (e: unknown) => (e instanceof NotFoundError ? 'not-found' : 'failed'),
    );
    if (after === 'served' || after === 'other bytes') {
      stats.resurrected.push(sha);
      o.log?.(`slow reader: ${sha} ${after} after its delete was acknowledged`);
    }
  };
  const done = (async () => {
    try {
      await redis.connect();
      while (!until()) {
        await cycle().catch((err: unknown) => o.log?.(`slow reader: ${String(err)}`));
        await sleep(500);
      }
    } finally {
      redis.disconnect();
    }
    return stats;
  })();
  return { done };
}

/** One line for a run's log: "slow reader: 12 reads raced a delete (11 completed), 0 resurrected". */
export function describeSlowReads(s: SlowReaderStats): string {
  return `slow reader: ${s.raced} reads raced a delete (${s.completed} completed), ${s.resurrected.length} resurrected`;
}

/** A delete through the recording SDK, noted in the op log; true when acknowledged. */
async function deleteRecorded(sdk: RecordingClient, oplog: OpLog, id: string): Promise<boolean> {
  try {
    await sdk.delete(id, { timeoutMs: 30_000 });
    oplog.endDelete(id, true);
    return true;
  } catch {
    oplog.endDelete(id, false);
    return false;
  }
}
