import { createRequire } from 'node:module';

/**
 * The typed surface of @ronomon/reed-solomon (a CommonJS native addon without
 * type declarations): Cauchy Reed–Solomon over GF(2^8), k ≤ MAX_K (24) data and
 * m ≤ MAX_M (6) parity shards, shard sizes a multiple of 8 bytes; `encode` runs in
 * libuv's threadpool and calls back.
 */
export interface RonomonReedSolomon {
  readonly MAX_K: number;
  readonly MAX_M: number;
  create(k: number, m: number): unknown;
  /** Encodes the `targets` shards (bit i = shard i) from the `sources` ones, in place. */
  encode(
    context: unknown,
    sources: number,
    targets: number,
    buffer: Buffer,
    bufferOffset: number,
    bufferSize: number,
    parity: Buffer,
    parityOffset: number,
    paritySize: number,
    callback: (error: Error | undefined) => void,
  ): void;
}
export const rs = createRequire(import.meta.url)('@ronomon/reed-solomon') as RonomonReedSolomon;
