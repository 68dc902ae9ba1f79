import type { StoreAt } from '../rpc/clients.js';
import type { Logger } from '../server/logger.js';
import type { ReplicationConfig } from './config.js';
import type { DirectoryCalls } from './directory-api.js';
import type { HeatTracker } from './heat.js';
import type { MetadataMirror } from './mirror.js';
import type { PlacementContext } from './placement.js';
import type { TaskQueue } from './queue.js';
import type { StoreCalls } from './store-calls.js';

/**
 * What the placement-mode parts of the manager (hot-replicas.ts, backfill.ts,
 * anti-entropy.ts) use of it: the mirrored metadata, heat, the task queue, the
 * clients, and the lease checks. The manager implements it; unit tests drive the
 * parts through a real manager on fakes.
 */
export interface PlacementEnv {
  readonly cfg: ReplicationConfig;
  readonly log: Logger;
  readonly directory: DirectoryCalls;
  readonly mirror: MetadataMirror;
  readonly heat: HeatTracker;
  /** The current task queue (replaced when the lease is taken again). */
  queue(): TaskQueue;
  /** The store's client, pinned to the store named (see ClientPool.store). */
  store(store: StoreAt): StoreCalls;
  /** True while the lease is held and locally valid. */
  acting(): boolean;
  /** Throws a non-retryable TaskError once the lease is lost. */
  ensureActing(): void;
  /** The manager's lease term (stores fence manager terms). */
  term(): bigint;
  /** Aborted when this instance stops being active. */
  signal(): AbortSignal;
  /** Wall clock (ms since the epoch). */
  now(): number;
  /** Monotonic clock (ms, any origin): for waits a wall-clock step must not shorten. */
  monotonic(): number;
  ctx(now: number): PlacementContext;
  /** Runs fn alone on the (blob, store) pair: no copy and tombstone there interleave. */
  exclusive<T>(blobId: string, storeId: string, fn: () => Promise<T>): Promise<T>;
}
