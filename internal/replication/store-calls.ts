import { type Client, Code, ConnectError } from '@connectrpc/connect';
import type { StoreService } from '../../gen/haystack/v1/store_pb.js';

/** The StoreService calls the manager makes. */
export type StoreCalls = Pick<
  Client<typeof StoreService>,
  'replicate' | 'delete' | 'scrub' | 'listNeedles' | 'stat' | 'listPlacementGroup' | 'getPlacementDigests'
>;

/** A task attempt that failed, with how the queue should treat it. */
export class TaskError extends Error {
  constructor(
    message: string,
    readonly o: { storeFault: boolean; retryable: boolean },
  ) {
    super(message);
    this.name = 'TaskError';
  }
}

/** Codes that blame the store called (its breaker counts them). */
export const STORE_FAULTS = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Unknown,
  Code.Internal,
  Code.ResourceExhausted,
  Code.Canceled,
]);

/** A failed store call as a retryable TaskError, blaming the store for its faults. */
export function storeCallError(what: string, err: unknown): TaskError {
  const ce = ConnectError.from(err);
  return new TaskError(`${what}: ${ce.rawMessage}`, {
    storeFault: STORE_FAULTS.has(ce.code),
    retryable: ce.code !== Code.FailedPrecondition,
  });
}

/**
 * A failed StoreService.Replicate as a TaskError: DATA_LOSS blames the source's
 * copy (`corrupt` is told), ALREADY_EXISTS means the target keeps other content
 * under the id (`refused` is told; not retried there), NOT_FOUND that the source
 * lacks the blob (retried, maybe from another source).
 */
export function replicateError(
  err: unknown,
  sourceId: string,
  targetId: string,
  on: { corrupt(): void; refused(): void },
): TaskError {
  const ce = ConnectError.from(err);
  if (ce.code === Code.DataLoss) {
    on.corrupt();
    return new TaskError(`source ${sourceId} is corrupt: ${ce.rawMessage}`, {
      storeFault: false,
      retryable: true,
    });
  }
  if (ce.code === Code.AlreadyExists) {
    on.refused();
    return new TaskError(`${targetId} refuses the blob: ${ce.rawMessage}`, {
      storeFault: false,
      retryable: false,
    });
  }
  if (ce.code === Code.NotFound) {
    return new TaskError(`source ${sourceId} lacks the blob: ${ce.rawMessage}`, {
      storeFault: false,
      retryable: true,
    });
  }
  return storeCallError(`replicate on ${targetId}`, ce);
}

/**
 * What a DATA_LOSS answer to StoreService.Replicate (of `blobId` from `sourceId`
 * onto `targetId`, with the store's message `detail`) says happened. The target
 * answers DATA_LOSS when the source's bytes fail verification on the way (it then
 * names the source: "source S holds other content …", "copy from S failed
 * verification …"), when the source's Read fails its own checksum, and also when
 * the target's own needle for the id is damaged and it will not let the copy
 * replace it (a damaged tombstone, or a newer stamp: internal/store/store-write.ts).
 * Only the first blames the source for sure; the message says which it was.
 */
export function replicateDataLoss(
  blobId: string,
  sourceId: string,
  targetId: string,
  detail: string,
): string {
  const sourceNamed = detail.startsWith(`source ${sourceId} `) || detail.startsWith(`copy from ${sourceId} `);
  const what = sourceNamed
    ? `the copy from ${sourceId} failed verification`
    : `${targetId} refused the copy (its own needle is damaged) or ${sourceId}'s read failed its checksum`;
  return `Replicate of ${blobId} from ${sourceId} onto ${targetId}: DATA_LOSS, ${what}: ${detail}`;
}
