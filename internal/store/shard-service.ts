/**
 * StoreService's shard RPCs (WriteShard, ReadShard, DeleteShard) over the
 * store's ShardStore: wire checks here, rules in shard-store.ts. Every number
 * from the wire is bounded before use.
 */
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import {
  type ReadShardRequest,
  type ReadShardResponse,
  ReadShardResponseSchema,
  type StoreService,
  type WriteShardRequest,
  type WriteShardResponse,
  WriteShardResponseSchema,
} from '../../gen/haystack/v1/store_pb.js';
import { validateShardIndex, validateStripeId } from '../common/shard-key.js';
import { invalidArgument, mapErrors, toConnectError } from '../rpc/errors.js';
import { keyPage } from '../rpc/key-page.js';
import { boundedChunks } from './chunk-stream.js';
import type { ShardStore } from './shard-store.js';

/** Largest chunk a client may send in one WriteShard message. */
const MAX_CHUNK = 4 * 1024 * 1024;
/** Largest shard: a stripe's data shard (1 GiB in production) with room to spare. */
export const MAX_SHARD_BYTES = 4 * 1024 * 1024 * 1024;

export interface ShardServiceOptions {
  /** The shard engine; undefined answers FAILED_PRECONDITION (a store opened without one). */
  shards: ShardStore | undefined;
  /**
   * Refuses a deposed replication manager's term (FAILED_PRECONDITION), and term 0
   * on a mutating call over mTLS (UNAVAILABLE); `what` names the call.
   */
  checkManagerTerm: (term: bigint, ctx: HandlerContext, what: string) => Promise<void>;
  storeId: string;
  readChunkSize: number;
  /** A shard read found this store's copy corrupt (DATA_LOSS). */
  onCorrupt?: (stripeId: string, index: number) => void;
}

type ShardHandlers = Pick<
  ServiceImpl<typeof StoreService>,
  'writeShard' | 'readShard' | 'deleteShard' | 'listShards'
>;

function checkShard(stripeId: string, index: number): void {
  const bad = validateStripeId(stripeId) ?? validateShardIndex(index);
  if (bad) throw invalidArgument(bad);
}

/** The shard handlers, to spread into StoreService's implementation. */
export function shardHandlers(o: ShardServiceOptions): ShardHandlers {
  const engine = (): ShardStore => {
    if (!o.shards) {
      throw new ConnectError(`store ${o.storeId} has no shard engine`, Code.FailedPrecondition);
    }
    return o.shards;
  };
  return {
    writeShard: (reqs, ctx) => writeShard(engine, o, reqs, ctx),
    readShard: (req, ctx) => readShard(engine, o, req, ctx),
    deleteShard: (req, ctx) =>
      mapErrors(async () => {
        checkShard(req.stripeId, req.index);
        await o.checkManagerTerm(req.term, ctx, 'DeleteShard');
        return { found: await engine().delete(req.stripeId, req.index) };
      }),
    listShards: (req) =>
      mapErrors(async () => {
        const { items, nextPageToken } = await keyPage(
          req.pageSize,
          req.pageToken,
          (after, n) => engine().list(after, n),
          (s) => s.key,
        );
        return {
          shards: items.map((s) => ({
            stripeId: s.stripeId,
            index: s.index,
            size: BigInt(s.size),
            writtenAtMs: BigInt(s.writtenAtMs),
          })),
          nextPageToken,
        };
      }),
  };
}

async function writeShard(
  engine: () => ShardStore,
  o: ShardServiceOptions,
  reqs: AsyncIterable<WriteShardRequest>,
  ctx: HandlerContext,
): Promise<WriteShardResponse> {
  const it = reqs[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done || first.value.msg.case !== 'header') {
    throw invalidArgument('the first WriteShard message must be a header');
  }
  const h = first.value.msg.value;
  checkShard(h.stripeId, h.index);
  if (h.size < 1n || h.size > BigInt(MAX_SHARD_BYTES)) {
    throw invalidArgument(`shard size ${h.size} is outside 1..${MAX_SHARD_BYTES} bytes`);
  }
  await o.checkManagerTerm(h.term, ctx, 'WriteShard');
  const size = Number(h.size);
  const r = await mapErrors(() =>
    engine().write(
      { stripeId: h.stripeId, index: h.index, size, crc32c: h.crc32c, replace: h.replace },
      boundedChunks(it, size, MAX_CHUNK),
    ),
  );
  return create(WriteShardResponseSchema, {
    replica: { storeId: o.storeId, volumeId: r.volumeId, offset: BigInt(r.offset) },
    written: r.written,
  });
}

async function* readShard(
  engine: () => ShardStore,
  o: ShardServiceOptions,
  req: ReadShardRequest,
  ctx: HandlerContext,
): AsyncGenerator<ReadShardResponse> {
  try {
    checkShard(req.stripeId, req.index);
    const r = await engine().openRead(req.stripeId, req.index);
    const start = Number(req.offset);
    if (req.offset > BigInt(r.size)) {
      throw new ConnectError(
        `offset ${req.offset} is past the end of the ${r.size}-byte shard`,
        Code.OutOfRange,
      );
    }
    const len = req.length === 0n ? r.size - start : Math.min(Number(req.length), r.size - start);
    yield create(ReadShardResponseSchema, {
      msg: {
        case: 'header',
        value: { size: BigInt(r.size), offset: BigInt(start), length: BigInt(len), crc32c: r.crc32c },
      },
    });
    for await (const chunk of r.stream(start, len, o.readChunkSize)) {
      if (ctx.signal.aborted) return;
      yield create(ReadShardResponseSchema, { msg: { case: 'chunk', value: chunk } });
    }
  } catch (err) {
    const ce = toConnectError(err);
    if (ce.code === Code.DataLoss) o.onCorrupt?.(req.stripeId, req.index);
    throw ce;
  }
}
