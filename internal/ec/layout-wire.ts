import { create } from '@bufbuild/protobuf';
import { type EcLayout, EcLayoutSchema } from '../../gen/haystack/v1/common_pb.js';
import { CODEC_ID, checkLayout, type ShardLayout } from './codec.js';

/** A codec layout as the contract's EcLayout. */
export function layoutToWire(l: ShardLayout): EcLayout {
  return create(EcLayoutSchema, {
    codec: CODEC_ID,
    dataShards: l.k,
    parityShards: l.m,
    size: BigInt(l.size),
    shardSize: BigInt(l.shardSize),
    shardCrc32c: [...l.crc32c],
  });
}

/**
 * An EcLayout from the wire or disk as a codec layout, or the problem with it
 * (an unknown codec, a code out of bounds, sizes that do not agree).
 */
export function layoutFromWire(w: EcLayout | undefined): ShardLayout | string {
  if (!w) return 'the EC layout is missing';
  if (w.codec !== CODEC_ID)
    return `EC codec "${w.codec}" is not known here (this build writes "${CODEC_ID}")`;
  if (w.size > BigInt(Number.MAX_SAFE_INTEGER) || w.shardSize > BigInt(Number.MAX_SAFE_INTEGER)) {
    return `EC layout sizes ${w.size}/${w.shardSize} are too large`;
  }
  const l: ShardLayout = {
    k: w.dataShards,
    m: w.parityShards,
    size: Number(w.size),
    shardSize: Number(w.shardSize),
    crc32c: [...w.shardCrc32c],
  };
  return checkLayout(l) ?? l;
}
