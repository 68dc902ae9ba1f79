import { crc32c } from '../store/crc32c.js';
import { EcParamsError, TooFewShardsError } from './errors.js';
import { rs } from './ronomon.js';

/**
 * The cold tier's codec: a blob split into k data shards plus m parity shards,
 * Cauchy Reed–Solomon over GF(2^w), w ≤ 8, as XORs of a bit matrix (Blömer et
 * al. 1995; Plank's Jerasure) — systematic: data shards are the blob's bytes, so a
 * read that gets all k of them only concatenates. Any k of the
 * k + m shards rebuild the blob. Each shard carries a CRC32C in the layout, so a
 * flipped shard is detected and treated as missing rather than decoded into wrong
 * bytes.
 *
 * Library: @ronomon/reed-solomon (C, native addon; the work runs in libuv's
 * threadpool, off the event loop), chosen over the WASM build of the Rust
 * reed-solomon-erasure crate in docs/design/ec-tier.md (figures from
 * `npm run bench:ec`; the WASM build trapped in its allocator under mixed use).
 * Parity bytes depend on the library's per-(k, m) field and matrix parameters, so
 * stored shards are a format: the version is pinned exactly and a layout names its
 * codec (CODEC_ID); another codec must be a new id, never a silent upgrade.
 */

/** The parity format of shards this codec writes (kept in every stored layout). */
export const CODEC_ID = 'ronomon-cauchy-6';

const contexts = new Map<number, unknown>();
function contextFor(k: number, m: number): unknown {
  const key = k * 64 + m;
  let c = contexts.get(key);
  if (c === undefined) {
    c = rs.create(k, m);
    contexts.set(key, c);
  }
  return c;
}

/** Computes the `targets` shards of `all` (k + m shards of shardSize, data first) from `sources`. */
function solve(
  all: Buffer,
  k: number,
  m: number,
  shardSize: number,
  sources: number,
  targets: number,
): Promise<void> {
  const split = k * shardSize;
  return new Promise((resolve, reject) =>
    rs.encode(contextFor(k, m), sources, targets, all, 0, split, all, split, m * shardSize, (err) =>
      err ? reject(new EcParamsError(`Reed–Solomon RS(${k},${m}): ${err.message}`)) : resolve(),
    ),
  );
}

/** Largest k and m accepted (the library's MAX_K and MAX_M; production uses RS(10,4)). */
export const MAX_DATA_SHARDS = 24;
export const MAX_PARITY_SHARDS = 6;
/** Shards are padded to a multiple of this many bytes. */
export const SHARD_ALIGN = 8;

/** A Reed–Solomon code: k data shards, m parity shards. */
export interface EcParams {
  readonly k: number;
  readonly m: number;
}

/**
 * What a reader needs to reassemble a blob from its shards: the code, the blob's
 * size in bytes, every shard's size (equal; the last data shard is zero-padded),
 * and the CRC32C of each of the k + m shards in shard order.
 */
export interface ShardLayout extends EcParams {
  /** Blob size in bytes. */
  readonly size: number;
  /** Bytes per shard: ceil(size / k) rounded up to SHARD_ALIGN (at least SHARD_ALIGN). */
  readonly shardSize: number;
  /** CRC32C of each shard, data shards first (length k + m). */
  readonly crc32c: readonly number[];
}

/** The k + m shards of one blob and their layout. */
export interface EncodedBlob {
  readonly layout: ShardLayout;
  /** Shard i is bytes [i·shardSize, (i+1)·shardSize) of one buffer (no copies). */
  readonly shards: readonly Buffer[];
}

/** A decoded blob and what it took. */
export interface DecodedBlob {
  readonly data: Buffer;
  /** Shards given that failed their CRC32C or had the wrong length (treated as missing). */
  readonly corrupt: readonly number[];
  /** False on the systematic fast path (all data shards intact: no Galois-field work). */
  readonly decoded: boolean;
}

/** Problem with a code from config or the wire, or undefined when valid. */
export function checkEcParams(p: EcParams): string | undefined {
  if (!Number.isInteger(p.k) || p.k < 1 || p.k > MAX_DATA_SHARDS) {
    return `data shard count k=${p.k} is outside 1..${MAX_DATA_SHARDS}`;
  }
  if (!Number.isInteger(p.m) || p.m < 1 || p.m > MAX_PARITY_SHARDS) {
    return `parity shard count m=${p.m} is outside 1..${MAX_PARITY_SHARDS}`;
  }
  return undefined;
}

/** Bytes per shard for a blob of `size` bytes split k ways. */
export function shardSizeFor(size: number, k: number): number {
  const raw = Math.ceil(size / k);
  return Math.max(SHARD_ALIGN, Math.ceil(raw / SHARD_ALIGN) * SHARD_ALIGN);
}

/** Problem with a layout read back from a store or the wire, or undefined. */
export function checkLayout(l: ShardLayout): string | undefined {
  const bad = checkEcParams(l);
  if (bad) return bad;
  if (!Number.isSafeInteger(l.size) || l.size < 0) return `blob size ${l.size} is not a byte count`;
  if (l.shardSize !== shardSizeFor(l.size, l.k)) {
    return `shard size ${l.shardSize} does not match ${l.size} bytes split ${l.k} ways (${shardSizeFor(l.size, l.k)})`;
  }
  if (l.crc32c.length !== l.k + l.m)
    return `layout has ${l.crc32c.length} shard checksums, not k+m=${l.k + l.m}`;
  return undefined;
}

/**
 * Splits `data` into k data shards, computes m parity shards and each shard's
 * CRC32C. Throws EcParamsError for a bad code.
 */
export async function encodeBlob(data: Uint8Array, params: EcParams): Promise<EncodedBlob> {
  const bad = checkEcParams(params);
  if (bad) throw new EcParamsError(bad);
  const { k, m } = params;
  const shardSize = shardSizeFor(data.length, k);
  const all = Buffer.alloc(shardSize * (k + m));
  all.set(data);
  await solve(all, k, m, shardSize, bits(0, k), bits(k, k + m));
  const shards = Array.from({ length: k + m }, (_, i) => all.subarray(i * shardSize, (i + 1) * shardSize));
  return { layout: { k, m, size: data.length, shardSize, crc32c: shards.map((s) => crc32c(s)) }, shards };
}

/** True when `bytes` is shard `index` of `layout`, intact (length and CRC32C). */
export function verifyShard(layout: ShardLayout, index: number, bytes: Uint8Array): boolean {
  return bytes.length === layout.shardSize && crc32c(bytes) === layout.crc32c[index];
}

/**
 * Reassembles the blob from whichever shards are given (`shards[i]` is shard i,
 * or undefined when it could not be read). Shards failing their CRC32C count as
 * missing. With all k data shards intact this only copies them (systematic fast
 * path); otherwise any k intact shards are decoded. Throws TooFewShardsError when
 * fewer than k are intact, EcParamsError for a bad layout.
 */
export async function decodeBlob(
  layout: ShardLayout,
  shards: ReadonlyArray<Uint8Array | undefined>,
): Promise<DecodedBlob> {
  const bad = checkLayout(layout);
  if (bad) throw new EcParamsError(bad);
  const { k, m, size, shardSize } = layout;
  const n = k + m;
  const corrupt: number[] = [];
  const intact: boolean[] = [];
  for (let i = 0; i < n; i++) {
    const s = shards[i];
    const ok = s !== undefined && verifyShard(layout, i, s);
    if (s !== undefined && !ok) corrupt.push(i);
    intact.push(ok);
  }
  if (intact.slice(0, k).every(Boolean)) {
    const data = Buffer.allocUnsafe(size);
    for (let i = 0, at = 0; at < size; i++, at += shardSize) {
      data.set((shards[i] as Uint8Array).subarray(0, Math.min(shardSize, size - at)), at);
    }
    return { data, corrupt, decoded: false };
  }
  const count = intact.filter(Boolean).length;
  if (count < k) throw new TooFewShardsError(count, k, corrupt);
  const all = await solveMissing(layout, shards, intact, bits(0, k));
  return { data: Buffer.from(all.subarray(0, size)), corrupt, decoded: true };
}

/**
 * Rebuilds shard `index` (data or parity) from the others, for repair onto a new
 * store: decodes the blob and re-encodes it (the encoding is deterministic), then
 * checks the rebuilt shard against the layout's CRC32C. Throws TooFewShardsError.
 */
export async function rebuildShard(
  layout: ShardLayout,
  shards: ReadonlyArray<Uint8Array | undefined>,
  index: number,
): Promise<Buffer> {
  if (!Number.isInteger(index) || index < 0 || index >= layout.k + layout.m) {
    throw new EcParamsError(`shard index ${index} is outside 0..${layout.k + layout.m - 1}`);
  }
  const bad = checkLayout(layout);
  if (bad) throw new EcParamsError(bad);
  const intact = Array.from({ length: layout.k + layout.m }, (_, i) => {
    const s = shards[i];
    return i !== index && s !== undefined && verifyShard(layout, i, s);
  });
  const count = intact.filter(Boolean).length;
  if (count < layout.k) {
    const corrupt = intact.flatMap((ok, i) => (!ok && i !== index && shards[i] !== undefined ? [i] : []));
    throw new TooFewShardsError(count, layout.k, corrupt);
  }
  const all = await solveMissing(layout, shards, intact, 1 << index);
  const shard = all.subarray(index * layout.shardSize, (index + 1) * layout.shardSize);
  if (!verifyShard(layout, index, shard)) {
    // Only possible if the layout's checksums were not made from these bytes.
    throw new EcParamsError(`rebuilt shard ${index} does not match the layout's CRC32C`);
  }
  return Buffer.from(shard);
}

/** Bit flags for shards [from, to). */
function bits(from: number, to: number): number {
  let b = 0;
  for (let i = from; i < to; i++) b |= 1 << i;
  return b;
}

/**
 * The k + m shards in one buffer with the non-intact ones among `wanted` solved
 * from the intact ones (the library needs at least k sources; callers check).
 */
async function solveMissing(
  layout: ShardLayout,
  shards: ReadonlyArray<Uint8Array | undefined>,
  intact: readonly boolean[],
  wanted: number,
): Promise<Buffer> {
  const { k, m, shardSize } = layout;
  const all = Buffer.alloc(shardSize * (k + m));
  let sources = 0;
  let targets = 0;
  for (let i = 0; i < k + m; i++) {
    if (intact[i]) {
      all.set(shards[i] as Uint8Array, i * shardSize);
      sources |= 1 << i;
    } else if (wanted & (1 << i)) {
      targets |= 1 << i;
    }
  }
  if (targets !== 0) await solve(all, k, m, shardSize, sources, targets);
  return all;
}

/**
 * The data shards a byte range of the blob lies in (a Range read fetches only
 * these when they are intact): first..last inclusive, and the range's offset
 * within the first. `length` 0 means to the end. An empty range gives first > last.
 */
export function dataShardsFor(
  layout: ShardLayout,
  offset: number,
  length: number,
): { first: number; last: number; skip: number } {
  const end = length === 0 ? layout.size : Math.min(layout.size, offset + length);
  if (offset >= end) return { first: 0, last: -1, skip: 0 };
  const first = Math.floor(offset / layout.shardSize);
  return { first, last: Math.floor((end - 1) / layout.shardSize), skip: offset - first * layout.shardSize };
}
