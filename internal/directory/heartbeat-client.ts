import type { VolumeStats } from '../../gen/haystack/v1/common_pb.js';
import type { StoreCommand } from '../../gen/haystack/v1/directory_pb.js';
import type { Logger } from '../server/logger.js';

/** What a store reports on each heartbeat. */
export interface StoreHeartbeatState {
  capacityBytes: bigint;
  freeBytes: bigint;
  volumes: VolumeStats[];
  writable: boolean;
}

export interface StoreHeartbeatOptions {
  storeId: string;
  /** host:port where the store serves StoreService. */
  address: string;
  zone: string;
  /** Directory instances (host:port); the stream goes to the leader. */
  directories: string[];
  intervalMs: number;
  state(): Promise<StoreHeartbeatState>;
  /** Carries out a command from the directory (delete blobs, compact a volume). */
  onCommand(cmd: StoreCommand): Promise<void>;
  log: Logger;
}

export interface StoreHeartbeat {
  stop(): Promise<void>;
}

/**
 * Keeps a store's Heartbeat stream to the directory leader open.
 * Placeholder until the directory lands: it does nothing.
 */
export function startStoreHeartbeat(opts: StoreHeartbeatOptions): StoreHeartbeat {
  opts.log.debug({ directories: opts.directories }, 'directory heartbeat not implemented yet');
  return { stop: async () => {} };
}
