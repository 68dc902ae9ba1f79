/**
 * Liveness of WatchMetadata streams. The sender (log-rpc.ts) writes at least an
 * empty message every keepalive; a watcher that hears nothing for the stall time
 * drops the stream and opens another, since a stream can stay open below HTTP/2
 * and deliver nothing (seen after a PING timeout under load), which leaves a
 * follower directory or a gateway behind for good.
 */

/**
 * How long a WatchMetadata stream may stay silent (ms): an idle stream gets an
 * empty message this often: FOLLOWER_SYNC_INTERVAL within [250 ms, 1 s].
 */
export function watchKeepaliveMs(followerSyncIntervalMs: number): number {
  return Math.max(250, Math.min(1000, followerSyncIntervalMs));
}

/**
 * A watcher that heard nothing on its stream for this long (ms) drops it and opens
 * another (WATCH_STALL_TIMEOUT of the directories; DirectoryClient's watchStallMs
 * option): fifteen keepalives and more, so a loaded box's late keepalive never looks
 * like a stuck stream; a stuck one costs at most this, where it used to cost forever.
 */
export const DEFAULT_WATCH_STALL_MS = 15_000;

/**
 * The silence allowed before a stream's first message: four times the stall time,
 * since the first message may be a snapshot the sender needs seconds to build and
 * send (2–11 s for a 7 MiB placement map under load, 31 s for 320 k per-blob records:
 * docs/benchmarks.md).
 */
export function firstMessageStallMs(stallMs: number): number {
  return 4 * stallMs;
}
