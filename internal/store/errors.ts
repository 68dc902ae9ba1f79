/**
 * Typed errors of the store engine. The gRPC layer maps them to status codes:
 * NotFoundError → NOT_FOUND, AlreadyExistsError → ALREADY_EXISTS,
 * ChecksumError → DATA_LOSS, ResourceExhaustedError → RESOURCE_EXHAUSTED,
 * InvalidArgumentError → INVALID_ARGUMENT, FailedPreconditionError →
 * FAILED_PRECONDITION. Any other error is a bug or an I/O
 * failure (INTERNAL / UNAVAILABLE).
 */
export abstract class StoreError extends Error {
  abstract readonly code:
    | 'NOT_FOUND'
    | 'ALREADY_EXISTS'
    | 'DATA_LOSS'
    | 'RESOURCE_EXHAUSTED'
    | 'INVALID_ARGUMENT'
    | 'FAILED_PRECONDITION';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The blob is not on this store (never written, deleted, or wrong cookie). */
export class NotFoundError extends StoreError {
  readonly code = 'NOT_FOUND' as const;
}

/**
 * The blob id is taken: its newest needle here is live with different content
 * (size or SHA-256). A deleted id may be written again (its new needle
 * supersedes the tombstone).
 */
export class AlreadyExistsError extends StoreError {
  readonly code = 'ALREADY_EXISTS' as const;
  constructor(
    message: string,
    readonly reason: 'different-content',
  ) {
    super(message);
  }
}

/** Where in a needle (or file) stored bytes failed validation. */
export type CorruptionKind =
  | 'truncated'
  | 'header-magic'
  | 'header-checksum'
  | 'header-field'
  | 'key-mismatch'
  | 'footer-magic'
  | 'footer-checksum'
  | 'data-checksum'
  /** AES-256-GCM tag mismatch: the ciphertext, its header or footer changed (or the wrong key). */
  | 'data-auth'
  | 'superblock'
  | 'index';

/**
 * Stored bytes do not match their checksum or framing. This replica's copy is
 * bad: read the blob from another replica and re-replicate it here.
 */
export class ChecksumError extends StoreError {
  readonly code = 'DATA_LOSS' as const;
  constructor(
    message: string,
    readonly kind: CorruptionKind,
    readonly volumeId?: number,
    readonly offset?: number,
  ) {
    super(message);
  }
}

/** Out of disk space, volume count limit reached, or the volume is unwritable. */
export class ResourceExhaustedError extends StoreError {
  readonly code = 'RESOURCE_EXHAUSTED' as const;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** The request itself is wrong (bad id, size mismatch, checksum mismatch of the upload). */
export class InvalidArgumentError extends StoreError {
  readonly code = 'INVALID_ARGUMENT' as const;
}

/** The store is not in a state to do this (e.g. re-wrap keys of a store without KEKs). */
export class FailedPreconditionError extends StoreError {
  readonly code = 'FAILED_PRECONDITION' as const;
}

/** True for errno codes meaning "no space / quota / file too large". */
export function isNoSpaceError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG';
}
