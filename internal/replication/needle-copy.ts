import { Code, ConnectError } from '@connectrpc/connect';
import type { NeedleFacts } from '../../gen/haystack/v1/store_pb.js';
import type { StoreView } from './placement.js';
import type { PlacementEnv } from './placement-env.js';
import { storeCallError, TaskError } from './store-calls.js';

/**
 * Copying one needle between stores of a placement group, verbatim: a live
 * needle with StoreService.Replicate keep_stamp (same stamp, cookie and facts;
 * the target keeps a needle of its own that is as new or newer), a tombstone with
 * StoreService.Delete written_at_ms (the same stamp; a newer needle there is
 * kept). So replicas converge on the newest needle per id whatever order copies,
 * writes and deletes arrive in (docs/volume-format.md#stamp-order).
 */

/** What became of one copy. */
export type CopyOutcome =
  | 'copied'
  /** The source no longer holds that needle (superseded or deleted since it was listed). */
  | 'gone'
  /**
   * Replicate answered DATA_LOSS: the source's bytes failed verification, or the
   * target's own needle is damaged and it keeps it (see replicateDataLoss).
   */
  | 'source-corrupt';

/** Brings `needle`, as `from` holds it, onto `to`. Throws TaskError on other failures. */
export async function copyNeedle(
  env: PlacementEnv,
  needle: NeedleFacts,
  from: StoreView,
  to: StoreView,
): Promise<CopyOutcome> {
  return (await copyNeedleDetailed(env, needle, from, to)).outcome;
}

/** copyNeedle, with the store's own message of a 'gone' or 'source-corrupt' outcome (`detail`). */
export async function copyNeedleDetailed(
  env: PlacementEnv,
  needle: NeedleFacts,
  from: StoreView,
  to: StoreView,
): Promise<{ outcome: CopyOutcome; detail: string }> {
  env.ensureActing();
  const opts = { timeoutMs: env.cfg.copyTimeoutMs, signal: env.signal() };
  try {
    if (needle.deleted) {
      await env
        .store(to)
        .delete({ blobId: needle.blobId, term: env.term(), writtenAtMs: needle.writtenAtMs }, opts);
    } else {
      await env.store(to).replicate(
        {
          blobId: needle.blobId,
          cookie: needle.cookie,
          source: { storeId: from.storeId, address: from.address, zone: from.zone },
          sha256: needle.sha256,
          term: env.term(),
          keepStamp: true,
        },
        opts,
      );
    }
    return { outcome: 'copied', detail: '' };
  } catch (err) {
    const ce = ConnectError.from(err);
    if (ce.code === Code.NotFound) return { outcome: 'gone', detail: ce.rawMessage };
    if (ce.code === Code.DataLoss) return { outcome: 'source-corrupt', detail: ce.rawMessage };
    throw storeCallError(`copy of ${needle.blobId} from ${from.storeId} to ${to.storeId}`, ce);
  }
}

/**
 * A blob's facts from the first of `sources` that answers (tombstones included):
 * undefined when every source answered NOT_FOUND; throws when none answered at all.
 */
export async function statFirst(
  env: PlacementEnv,
  blobId: string,
  sources: readonly StoreView[],
): Promise<{ needle: NeedleFacts; from: StoreView } | undefined> {
  let lastErr: unknown;
  let answered = false;
  for (const s of sources) {
    try {
      const res = await env
        .store(s)
        .stat({ blobId, cookie: 0n, includeDeleted: true }, { timeoutMs: 10_000, signal: env.signal() });
      if (res.needle) return { needle: res.needle, from: s };
      answered = true;
    } catch (err) {
      if (ConnectError.from(err).code === Code.NotFound) answered = true;
      else lastErr = err;
    }
  }
  if (answered || sources.length === 0) return undefined;
  throw new TaskError(`no member answered Stat of ${blobId}: ${ConnectError.from(lastErr).rawMessage}`, {
    storeFault: false,
    retryable: true,
  });
}
