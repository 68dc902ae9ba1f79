/**
 * Typed errors of the directory's logic (the replicated log, leadership, blob
 * records, placement). The service edge maps them to gRPC once, in
 * grpc-errors.ts:
 *
 * | error                   | gRPC status                                   |
 * | ----------------------- | --------------------------------------------- |
 * | NotLeaderError          | FAILED_PRECONDITION (UNAVAILABLE if forwarded), leader in metadata |
 * | UnavailableError        | UNAVAILABLE (retry: no leader, lease lapsed, outcome unknown)      |
 * | NotFoundError           | NOT_FOUND                                     |
 * | AlreadyExistsError      | ALREADY_EXISTS                                |
 * | StaleTermError          | FAILED_PRECONDITION (a newer term exists)     |
 * | VersionMismatchError    | FAILED_PRECONDITION (re-read, then retry)     |
 * | TombstonesPendingError  | FAILED_PRECONDITION (wait for the tombstones) |
 * | WrongModeError          | FAILED_PRECONDITION (placement groups on/off), mode in metadata |
 * | PlacementPendingError   | UNAVAILABLE (groups not applied yet: retry)   |
 * | NoPlacementError        | UNAVAILABLE or RESOURCE_EXHAUSTED             |
 *
 * Any other error is a bug or an I/O failure and leaves as UNKNOWN.
 */
export abstract class DirectoryError extends Error {
  abstract readonly code:
    | 'FAILED_PRECONDITION'
    | 'UNAVAILABLE'
    | 'NOT_FOUND'
    | 'ALREADY_EXISTS'
    | 'RESOURCE_EXHAUSTED';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A directory instance as named in errors. */
export interface LeaderRef {
  id: string;
  address: string;
}

/**
 * This instance does not lead (or no longer does). The message names the leader
 * when one is known ("...; the leader is <id> at <address>"), and the mapping
 * puts its address in `haystack-leader-address` so clients go there next time.
 * `forwarded`: a request a follower already forwarded once reached a non-leader
 * (leadership moved meanwhile) — UNAVAILABLE, retry.
 */
export class NotLeaderError extends DirectoryError {
  readonly code: 'FAILED_PRECONDITION' | 'UNAVAILABLE';
  constructor(
    message: string,
    readonly leader: LeaderRef | null,
    opts: { forwarded?: boolean } = {},
  ) {
    super(leader ? `${message}; the leader is ${leader.id} at ${leader.address}` : message);
    this.code = opts.forwarded ? 'UNAVAILABLE' : 'FAILED_PRECONDITION';
  }
}

/**
 * The directory cannot do it now; retrying later can succeed: no leader, the
 * lease could not be renewed, the leader is taking office, a change's outcome
 * is unknown (it stepped down before the majority acknowledged), or an index
 * is not applied here yet.
 */
export class UnavailableError extends DirectoryError {
  readonly code = 'UNAVAILABLE' as const;
}

/** No such blob record. */
export class NotFoundError extends DirectoryError {
  readonly code = 'NOT_FOUND' as const;
}

/** The blob id is taken (committed, possibly with different content). */
export class AlreadyExistsError extends DirectoryError {
  readonly code = 'ALREADY_EXISTS' as const;
}

/**
 * A request of an older term than this instance has promised (a candidate's
 * GetLogState, a catch-up stream), or a term another candidate already holds.
 * The message keeps "current term N" so the candidate learns N.
 */
export class StaleTermError extends DirectoryError {
  readonly code = 'FAILED_PRECONDITION' as const;
}

/** A compare-and-set lost: the record (blob version, group epoch) moved since the caller read it. */
export class VersionMismatchError extends DirectoryError {
  readonly code = 'FAILED_PRECONDITION' as const;
}

/** The blob was deleted and stores still owe its tombstones: the id cannot be reused or changed yet. */
export class TombstonesPendingError extends DirectoryError {
  readonly code = 'FAILED_PRECONDITION' as const;
}

/**
 * The call has no meaning in this cluster's mode (per-blob records vs placement
 * groups). `placement`: the mode the cluster is in (the mapping puts it in
 * `haystack-cluster-mode`, so a gateway whose followed map lags can tell).
 */
export class WrongModeError extends DirectoryError {
  readonly code = 'FAILED_PRECONDITION' as const;
  constructor(
    message: string,
    readonly placement: boolean,
  ) {
    super(message);
  }
}

/**
 * A directory configured for placement groups (PLACEMENT_GROUPS > 0) whose state
 * has neither the groups nor a per-blob record: the leader has not created them
 * yet (it waits for the stores to settle), or this instance has not applied them
 * yet (a follower that lags at a cluster's birth). Its state would answer a
 * per-blob call as an empty cluster of per-blob records (NOT_FOUND, an empty
 * page), so it answers UNAVAILABLE: retry, here or on the leader.
 */
export class PlacementPendingError extends DirectoryError {
  readonly code = 'UNAVAILABLE' as const;
}

/**
 * Allocation found too few stores (allocation.ts): `unavailable` when stores
 * are down or unwritable (wait or repair), `exhausted` when they lack room
 * (add capacity). The message says what each store lacks.
 */
export class NoPlacementError extends DirectoryError {
  readonly code: 'UNAVAILABLE' | 'RESOURCE_EXHAUSTED';
  constructor(
    message: string,
    readonly reason: 'unavailable' | 'exhausted',
  ) {
    super(message);
    this.code = reason === 'unavailable' ? 'UNAVAILABLE' : 'RESOURCE_EXHAUSTED';
  }
}
