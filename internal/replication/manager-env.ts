import type { StoreClient } from '../ec/shard-client.js';
import type { LeaseKeeper } from '../lease/lease-keeper.js';
import type { StoreAt } from '../rpc/clients.js';
import type { Logger } from '../server/logger.js';
import type { ColdTierEvents } from './cold-tier.js';
import type { ReplicationConfig } from './config.js';
import type { DirectoryCalls } from './directory-api.js';
import type { PlacementEnv } from './placement-env.js';
import type { Task } from './queue.js';
import type { StoreCalls } from './store-calls.js';

/** What a ReplicationManager is built from. */
export interface ManagerDeps {
  cfg: ReplicationConfig;
  log: Logger;
  directory: DirectoryCalls;
  /** StoreService client pinned to the store named (see ClientPool.store). */
  stores: (store: StoreAt) => StoreCalls;
  /**
   * The full StoreService client (Write, Read, shard RPCs) the cold tier moves
   * blobs with; without it no blob is encoded (unit tests on fakes).
   */
  shardStores?: (store: StoreAt) => StoreClient;
  /** The lease keeper; undefined runs always active (single instance without Redis). */
  lease: LeaseKeeper | undefined;
  events?: ManagerEvents;
  /** Wall clock (ms since the epoch): stamps, heat, task times. Default Date.now. */
  now?: () => number;
  /**
   * Monotonic clock (ms, any origin): durations that guard safety, such as
   * BACKFILL_SETTLE, which a wall-clock step must not shorten. Default performance.now.
   */
  monotonic?: () => number;
}

/** Hooks a host (tests, metrics) may set to watch the manager act. */
export interface ManagerEvents extends ColdTierEvents {
  onActiveChange?(active: boolean): void;
  onTaskFinished?(task: Task, outcome: 'done' | 'retry' | 'failed'): void;
  onReport?(reporterId: string, blobs: number): void;
  onCollected?(storeId: string, blobId: string): void;
  onRepair?(storeId: string, blobId: string): void;
}

/**
 * What the manager's parts (blob-planner.ts, blob-copy.ts, blob-remove.ts,
 * blob-repair.ts, orphan-gc.ts, monitor.ts) use of it: PlacementEnv (mirrored
 * metadata, heat, queue, clients, lease checks, the pair lock) plus the few
 * things the v1 layout and the loops need beyond it. The manager implements it.
 */
export interface ManagerEnv extends PlacementEnv {
  /** True while this instance holds the lease (acting() also wants it locally valid). */
  active(): boolean;
  /** True once the directory maps placement groups (no per-blob records). */
  placementMode(): boolean;
  readonly events: ManagerEvents;
  /** Starts every task that may run now and arranges a wake-up for the rest. */
  pump(): void;
}
