import { createHash } from 'node:crypto';
import { Code, ConnectError } from '@connectrpc/connect';
import { type BlobMeta, StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { dataShardsFor, type ShardLayout, verifyShard } from '../ec/codec.js';
import { TooFewShardsError } from '../ec/errors.js';
import { layoutFromWire } from '../ec/layout-wire.js';
import { getShard, readStripe, type StoreClient } from '../ec/shard-client.js';
import type { StoreAt } from '../rpc/clients.js';
import { deadlineSignal } from '../rpc/deadline.js';
import type { Logger } from '../server/logger.js';
import type { PlacementView } from './placement-view.js';

/** What a cold read cost (for metrics). */
export interface ColdReadResult {
  /** The bytes of the range asked for. */
  data: Buffer;
  /** True when shards were missing or corrupt and the range was decoded from k others. */
  degraded: boolean;
  /** Shard indices that failed (store down, error, DATA_LOSS), with why. */
  failed: ReadonlyMap<number, string>;
}

export interface ColdReaderOptions {
  view: PlacementView;
  /** StoreService client (ReadShard) pinned to the store named (see ClientPool.store). */
  store(store: StoreAt): Pick<StoreClient, 'readShard'>;
  /** Longest wait for one shard read. */
  shardTimeoutMs: number;
  log: Logger;
}

/**
 * Reads a cold blob's bytes from its stripe (docs/design/ec-tier.md, "How a cold
 * blob is found"): the blob's ColdRef (from a member's stub) names the stripe
 * range; shard i of the stripe is on the group's ec_members[i] (followed
 * placement map).
 *
 * - Systematic: the data shards the range lies in are read directly, each as a
 *   ranged ReadShard (the store checks its needle CRC32C; a whole shard is also
 *   checked against the layout's CRC32C), and concatenated: no decoding, usually
 *   one store for a Range request.
 * - Degraded: when one of them fails (DOWN, error, DATA_LOSS), the stripe is read
 *   from any k intact shards (data first, then parity) and decoded (readStripe).
 * - A whole-blob read is checked against the blob's SHA-256 before a byte is
 *   answered (DATA_LOSS on a mismatch); fewer than k intact shards: UNAVAILABLE.
 */
export class ColdReader {
  constructor(private readonly o: ColdReaderOptions) {}

  /** Shard i's store client, or undefined when the EC member is JOINING (being rebuilt), DOWN or unknown. */
  private shardStores(blobId: string, n: number): Array<Pick<StoreClient, 'readShard'> | undefined> {
    const p = this.o.view.state.placement;
    const ec = p.groupFor(blobId)?.ecMembers ?? [];
    if (ec.length !== n) {
      throw new ConnectError(
        `blob ${blobId} is erasure-coded across ${n} shards but its placement group lists ${ec.length} EC members; retry once the placement map catches up`,
        Code.Unavailable,
      );
    }
    return ec.map((m) => {
      const s = this.o.view.state.stores.get(m.storeId);
      if (m.state !== PlacementMemberState.ACTIVE || !s?.address || s.health === StoreHealth.DOWN) {
        return undefined;
      }
      return this.o.store({ storeId: m.storeId, address: s.address });
    });
  }

  /** The bytes [offset, offset + length) of the cold blob `meta` (meta.cold set). */
  async read(meta: BlobMeta, offset: number, length: number, signal?: AbortSignal): Promise<ColdReadResult> {
    const ref = meta.cold;
    if (!ref) throw new ConnectError(`blob ${meta.blobId} is not erasure-coded`, Code.Internal);
    const layout = layoutFromWire(ref.layout);
    if (typeof layout === 'string') {
      throw new ConnectError(
        `blob ${meta.blobId}'s stripe cannot be read here: ${layout}`,
        Code.FailedPrecondition,
      );
    }
    const stores = this.shardStores(meta.blobId, layout.k + layout.m);
    const start = Number(ref.offset) + offset;
    const whole = offset === 0 && length === Number(meta.size);
    const timeout = () => this.signal(signal);
    let result: ColdReadResult;
    const sys = await this.systematic(ref.stripeId, layout, stores, start, length, timeout);
    if (sys.data) {
      result = { data: sys.data, degraded: false, failed: sys.failed };
    } else {
      try {
        // Shards that just failed are not asked again: a stalled store costs one timeout, not two.
        const rest = stores.map((c, i) => (sys.failed.has(i) ? undefined : c));
        const r = await readStripe(ref.stripeId, layout, rest as Array<StoreClient | undefined>, {
          signal: timeout(),
        });
        const failed = new Map([...r.failed, ...sys.failed]);
        for (const i of r.corrupt) failed.set(i, 'CRC32C mismatch');
        result = { data: r.data.subarray(start, start + length), degraded: r.decoded, failed };
      } catch (err) {
        if (err instanceof TooFewShardsError) {
          throw new ConnectError(`blob ${meta.blobId} cannot be read now: ${err.message}`, Code.Unavailable);
        }
        throw ConnectError.from(err);
      }
    }
    if (whole && !createHash('sha256').update(result.data).digest().equals(meta.sha256)) {
      throw new ConnectError(
        `blob ${meta.blobId}: the bytes read from stripe ${ref.stripeId} do not match the blob's SHA-256`,
        Code.DataLoss,
      );
    }
    if (result.failed.size > 0) {
      this.o.log.warn(
        { blobId: meta.blobId, stripe: ref.stripeId, failed: Object.fromEntries(result.failed) },
        result.degraded ? 'degraded cold read' : 'cold read retried',
      );
    }
    return result;
  }

  private signal(outer?: AbortSignal): AbortSignal {
    return deadlineSignal(this.o.shardTimeoutMs, outer, 'a shard read');
  }

  /**
   * The range from its data shards alone, or data undefined when any of them
   * failed (the caller decodes). Shards are read in parallel; whole shards are
   * checked against the layout's CRC32C.
   */
  private async systematic(
    stripeId: string,
    layout: ShardLayout,
    stores: Array<Pick<StoreClient, 'readShard'> | undefined>,
    start: number,
    length: number,
    signal: () => AbortSignal,
  ): Promise<{ data?: Buffer; failed: Map<number, string> }> {
    const failed = new Map<number, string>();
    if (length === 0) return { data: Buffer.alloc(0), failed };
    const { first, last, skip } = dataShardsFor(layout, start, length);
    const parts = await Promise.all(
      Array.from({ length: last - first + 1 }, async (_, j) => {
        const i = first + j;
        const client = stores[i];
        if (!client) {
          failed.set(i, 'store not readable (DOWN, JOINING or unknown)');
          return undefined;
        }
        const from = j === 0 ? skip : 0;
        const shardEnd = Math.min(layout.shardSize, start + length - i * layout.shardSize);
        try {
          const bytes = await getShard(client as StoreClient, stripeId, i, {
            offset: from,
            length: shardEnd - from,
            signal: signal(),
          });
          if (bytes.length !== shardEnd - from)
            throw new Error(`got ${bytes.length} of ${shardEnd - from} bytes`);
          if (from === 0 && shardEnd === layout.shardSize && !verifyShard(layout, i, bytes)) {
            throw new Error('CRC32C mismatch against the layout');
          }
          return bytes;
        } catch (err) {
          failed.set(i, ConnectError.from(err).message);
          return undefined;
        }
      }),
    );
    if (parts.some((p) => p === undefined)) return { failed };
    return { data: Buffer.concat(parts as Buffer[]), failed };
  }
}
