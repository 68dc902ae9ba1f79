/**
 * Typed errors of the erasure-coding tier. Mapped to gRPC once, at the edge:
 * TooFewShardsError → UNAVAILABLE (fewer than k intact shards answered; another
 * try may find more), EcParamsError → INVALID_ARGUMENT.
 */
export abstract class EcError extends Error {
  abstract readonly code: 'UNAVAILABLE' | 'INVALID_ARGUMENT';
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Fewer than k intact shards: the blob cannot be decoded from what was read. */
export class TooFewShardsError extends EcError {
  readonly code = 'UNAVAILABLE' as const;
  constructor(
    readonly intact: number,
    readonly k: number,
    readonly corrupt: readonly number[],
    /** What went wrong with the shards that could not be read, for people. */
    detail = '',
  ) {
    super(
      `only ${intact} of the ${k} shards needed are intact` +
        (corrupt.length ? ` (shards ${corrupt.join(', ')} failed their CRC32C)` : '') +
        (detail ? `; ${detail}` : ''),
    );
  }
}

/** A (k, m) code, shard size or layout that the codec cannot use. */
export class EcParamsError extends EcError {
  readonly code = 'INVALID_ARGUMENT' as const;
}
