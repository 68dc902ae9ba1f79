/**
 * Moving shards between a stripe and its stores over StoreService's WriteShard /
 * ReadShard (docs/design/ec-tier.md). Used by whoever encodes (the replication
 * manager), reads (gateways: systematic and degraded reads) and repairs.
 */
import { create } from '@bufbuild/protobuf';
import type { Client } from '@connectrpc/connect';
import {
  type StoreService,
  type WriteShardRequest,
  WriteShardRequestSchema,
  type WriteShardResponse,
} from '../../gen/haystack/v1/store_pb.js';
import { type DecodedBlob, decodeBlob, type EncodedBlob, type ShardLayout, verifyShard } from './codec.js';
import { TooFewShardsError } from './errors.js';

export type StoreClient = Client<typeof StoreService>;

/** Largest chunk sent per WriteShard message. */
const SHARD_CHUNK = 256 * 1024;

export interface PutShardOptions {
  /** Fencing term of the replication manager (0 when unknown). */
  term?: bigint;
  /** Replace a live shard holding other bytes (repair). */
  replace?: boolean;
  signal?: AbortSignal;
}

/** Writes shard `index` of `stripeId` to one store; resolves once it is durable there. */
export function putShard(
  client: StoreClient,
  stripeId: string,
  index: number,
  bytes: Uint8Array,
  crc32c: number,
  o: PutShardOptions = {},
): Promise<WriteShardResponse> {
  async function* msgs(): AsyncGenerator<WriteShardRequest> {
    yield create(WriteShardRequestSchema, {
      msg: {
        case: 'header',
        value: {
          stripeId,
          index,
          size: BigInt(bytes.length),
          crc32c,
          term: o.term ?? 0n,
          replace: o.replace ?? false,
        },
      },
    });
    for (let at = 0; at < bytes.length; at += SHARD_CHUNK) {
      yield create(WriteShardRequestSchema, {
        msg: { case: 'chunk', value: bytes.subarray(at, Math.min(bytes.length, at + SHARD_CHUNK)) },
      });
    }
  }
  return client.writeShard(msgs(), o.signal ? { signal: o.signal } : {});
}

/**
 * Writes every shard of an encoded stripe, shard i to `stores[i]`, in parallel;
 * resolves only when all k + m are durable (the cooling commit point comes after
 * this), else rejects with the lowest failed shard, once every write has settled.
 */
export async function putStripe(
  stripeId: string,
  enc: EncodedBlob,
  stores: readonly StoreClient[],
  o: PutShardOptions = {},
): Promise<void> {
  if (stores.length !== enc.shards.length) {
    throw new Error(
      `stripe ${stripeId} has ${enc.shards.length} shards but ${stores.length} stores were given`,
    );
  }
  // Every write settles before the answer, so nothing is still in flight when a caller moves on.
  const settled = await Promise.allSettled(
    enc.shards.map((bytes, i) =>
      putShard(stores[i] as StoreClient, stripeId, i, bytes, enc.layout.crc32c[i] as number, o),
    ),
  );
  const i = settled.findIndex((r) => r.status === 'rejected');
  if (i >= 0) {
    const err = (settled[i] as PromiseRejectedResult).reason as Error;
    throw new Error(`shard ${i} of stripe ${stripeId}: ${err.message}`, { cause: err });
  }
}

/** Reads shard `index` of `stripeId` (or a byte range of it) from one store. */
export async function getShard(
  client: StoreClient,
  stripeId: string,
  index: number,
  o: { offset?: number; length?: number; signal?: AbortSignal } = {},
): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  let header = false;
  for await (const msg of client.readShard(
    { stripeId, index, offset: BigInt(o.offset ?? 0), length: BigInt(o.length ?? 0) },
    o.signal ? { signal: o.signal } : {},
  )) {
    if (msg.msg.case === 'header') header = true;
    else if (msg.msg.case === 'chunk') parts.push(msg.msg.value);
  }
  if (!header) throw new Error(`ReadShard of shard ${index} of ${stripeId} carried no header`);
  return Buffer.concat(parts);
}

/** A stripe read and what it cost. */
export interface StripeRead extends DecodedBlob {
  /** Shard indices whose store failed or was unreachable (error messages by index). */
  readonly failed: ReadonlyMap<number, string>;
}

/**
 * Reads a whole stripe: the k data shards first (systematic: no decoding when
 * all answer intact), and only when some fail or are corrupt, parity shards —
 * as many as are missing, then more if those fail too. `stores[i]` holds shard
 * i (undefined: known down, skipped). Rejects with TooFewShardsError when fewer
 * than k intact shards could be read.
 */
export async function readStripe(
  stripeId: string,
  layout: ShardLayout,
  stores: ReadonlyArray<StoreClient | undefined>,
  o: { signal?: AbortSignal } = {},
): Promise<StripeRead> {
  const n = layout.k + layout.m;
  const got: Array<Buffer | undefined> = new Array(n).fill(undefined);
  const failed = new Map<number, string>();
  let intact = 0;
  const fetch = async (i: number) => {
    const client = stores[i];
    if (!client) {
      failed.set(i, 'store down');
      return;
    }
    try {
      const bytes = await getShard(client, stripeId, i, o.signal ? { signal: o.signal } : {});
      got[i] = bytes;
      // A shard that arrives but fails its CRC32C counts as missing (decodeBlob reports it).
      if (verifyShard(layout, i, bytes)) intact++;
    } catch (err) {
      failed.set(i, (err as Error).message);
    }
  };
  await Promise.all(Array.from({ length: layout.k }, (_, i) => fetch(i)));
  for (let next = layout.k; intact < layout.k && next < n; ) {
    const batch = Array.from({ length: Math.min(layout.k - intact, n - next) }, (_, j) => next + j);
    next += batch.length;
    await Promise.all(batch.map(fetch));
  }
  try {
    return { ...(await decodeBlob(layout, got)), failed };
  } catch (err) {
    if (err instanceof TooFewShardsError && failed.size > 0) {
      const why = [...failed].map(([i, m]) => `shard ${i}: ${m}`).join('; ');
      throw new TooFewShardsError(err.intact, err.k, err.corrupt, why);
    }
    throw err;
  }
}
