/**
 * Liveness of WatchMetadata streams. The sender (log-rpc.ts) writes at least an
 * empty message every keepalive; a watcher that hears nothing for the stall time
 * drops the stream and opens another, since a stream can stay open below HTTP/2
 * and deliver nothing (seen after a PING timeout under load), which leaves a
 * follower directory or a gateway behind for good.
 */

/**
 * How long a WatchMetadata stream may stay silent (ms): an idle stream gets an
 * empty message this often: FOLLOWER_SYNC_INTERVAL within [100 ms, 1 s].
 */
export function watchKeepaliveMs(followerSyncIntervalMs: number): number {
  return Math.max(100, Math.min(1000, followerSyncIntervalMs));
}

/**
 * A watcher that heard nothing on its stream for this long (ms) drops it and opens
 * another: four keepalives missed, and never under two seconds (a busy event loop
 * delays a keepalive; a needless reconnect only costs a resend from the commit index).
 */
export function watchStallMs(followerSyncIntervalMs: number): number {
  return Math.max(2000, 4 * watchKeepaliveMs(followerSyncIntervalMs));
}

/**
 * The stall time for watchers outside the directory group (gateways, the
 * replication manager), which do not know FOLLOWER_SYNC_INTERVAL: the longest
 * keepalive (1 s) missed four times.
 */
export const WATCHER_STALL_MS = watchStallMs(1000);
