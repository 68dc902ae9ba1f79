import { MAX_PLACEMENT_GROUPS } from '../common/placement.js';
import { REDIS_URL, REDIS_URL_SHAPE, redactedRedisUrl } from '../common/redis-client.js';
import { COMMON_ENV_HELP, envReader, readServerConfig, type ServerConfig } from '../config/common.js';
import type { Env } from '../config/env.js';
import { list } from '../store/config.js';
import { DEFAULT_WATCH_STALL_MS } from './watch-liveness.js';

/** Configuration of a directory instance (`haystack directory`). */
export interface DirectoryConfig extends ServerConfig {
  directoryId: string;
  advertise: string;
  dataDir: string;
  /** Every directory instance, this one included (host:port). */
  peers: string[];
  /** Empty: the in-process lease (one directory only; see docs/directory.md). */
  redisUrl: string;
  leaseKey: string;
  leaderTimeoutMs: number;
  leaderHeartbeatIntervalMs: number;
  heartbeatIntervalMs: number;
  storeDegradedAfterMs: number;
  storeDownAfterMs: number;
  followerSyncIntervalMs: number;
  /** WATCH_STALL_TIMEOUT: a follower drops a leader stream silent this long (watch-liveness.ts). */
  watchStallMs: number;
  snapshotIntervalMs: number;
  logRetainEntries: number;
  readIndexWaitMs: number;
  allocationTtlMs: number;
  defaultReplicaCount: number;
  minFreeBytes: number;
  /** 0: per-blob records (v1 clusters); else the placement group count of a new cluster. */
  placementGroups: number;
  placementReplaceAfterMs: number;
  /** Stores the first placement waits for (0: DEFAULT_REPLICA_COUNT), placement-start.ts. */
  placementExpectedStores: number;
  /** How long the first placement waits for them once DEFAULT_REPLICA_COUNT are up (ms). */
  placementExpectedWaitMs: number;
  /**
   * How long an eligible store stays well below its share of memberships before
   * the leader starts balance moves on its own (ms; 0: only `haystack placement
   * balance` moves them), placement-keeper.ts.
   */
  placementAutoBalanceAfterMs: number;
}

export const DIRECTORY_ENV_HELP = `${COMMON_ENV_HELP}
  DIRECTORY_ID           instance id (default directory-<port>)
  DIRECTORY_ADVERTISE    host:port peers reach this instance at (default: the listen address)
  DATA_DIR               metadata log and snapshots (flag --data; default ./data/<id>)
  DIRECTORY_PEERS        comma-separated host:port of every directory instance
  REDIS_URL              Redis for the leader lease (default redis://127.0.0.1:6379); set to the
                         empty string for an in-process lease: then only the first of
                         DIRECTORY_PEERS ever leads (no failover), meant for one-machine dev
  LEASE_KEY              Redis key of the lease; the term counter is <key>:term
                         (default haystack:directory:leader)
  LEADER_TIMEOUT         lease time-to-live: a dead leader is replaced after at most this
                         plus one retry, so writes resume within ~2.5s (default 2s)
  LEADER_HEARTBEAT_INTERVAL  lease renewal period (default 500ms, at most half of LEADER_TIMEOUT);
                         the leader stops committing when no renewal succeeded for
                         LEADER_TIMEOUT minus a safety margin (a fifth of it, 50ms..1s)
  HEARTBEAT_INTERVAL     store heartbeat period, the stores' own setting (default 5s)
  STORE_DEGRADED_AFTER   heartbeat age that marks a store DEGRADED, longer than HEARTBEAT_INTERVAL
                         (default 2 x HEARTBEAT_INTERVAL)
  STORE_DOWN_AFTER       heartbeat age that marks a store DOWN (default 3 x HEARTBEAT_INTERVAL)
  FOLLOWER_SYNC_INTERVAL how often a follower re-reports its durable index when idle (default 0.5s);
                         it acknowledges new entries as soon as they are fsync'd; also the keepalive
                         period of idle WatchMetadata streams (within 250ms..1s)
  WATCH_STALL_TIMEOUT    a follower drops a leader stream silent this long and opens another
                         (default 15s; four times it before the stream's first message)
  SNAPSHOT_INTERVAL      how often the metadata is snapshotted and the log truncated (default 60s)
  LOG_RETAIN_ENTRIES     entries kept in the log behind a snapshot, so briefly lagging
                         followers catch up without a snapshot transfer (default 10000)
  READ_INDEX_WAIT        how long a follower waits for Locate's min_index before forwarding
                         the read to the leader (default 500ms)
  ALLOCATION_TTL         how long an allocation without a commit counts as in flight for
                         VerifyBlobs (default 1h)
  DEFAULT_REPLICA_COUNT  replicas per new blob (default 3)
  MIN_FREE_BYTES         stores with less free space get no new blobs (default 100MiB)
  PLACEMENT_GROUPS       placement groups of a new cluster, 1..65536, fixed at creation (about
                         100 memberships per store: stores x 100 / replicas; see
                         docs/design/metadata-at-scale.md); 0 = per-blob directory records,
                         the v1 layout (default 64)
  PLACEMENT_REPLACE_AFTER  how long a store stays DOWN before its placement-group memberships
                         move to other stores (JOINING, backfilled) (default 60s)
  PLACEMENT_EXPECTED_STORES  stores a new cluster's placement groups wait for, so each gets
                         memberships at once (a store registering after the groups exist gets
                         its share by PLACEMENT_AUTO_BALANCE_AFTER); 0 = DEFAULT_REPLICA_COUNT
                         (default 0)
  PLACEMENT_EXPECTED_WAIT  how long the groups wait for PLACEMENT_EXPECTED_STORES once
                         DEFAULT_REPLICA_COUNT stores are up; then they are created on the stores
                         there (default 60s)
  PLACEMENT_AUTO_BALANCE_AFTER  how long a HEALTHY writable store holds at least 2 memberships
                         fewer than the mean before the leader moves memberships onto it by
                         itself (balance moves, a few groups at a time; a store added to a
                         running cluster fills up this way); 0 = off, only
                         \`haystack placement balance\` moves them (default 60s)`;

export function readDirectoryConfig(
  flags: { listen?: string; data?: string },
  env: Env = process.env,
): DirectoryConfig {
  const r = envReader(env);
  const server = readServerConfig(r, '127.0.0.1:9000', flags);
  const port = server.listen.split(':').pop();
  const directoryId = r.matching(
    'DIRECTORY_ID',
    `directory-${port}`,
    /^[A-Za-z0-9._-]{1,64}$/,
    'an id of 1-64 characters [A-Za-z0-9._-]',
  );
  const heartbeatIntervalMs = r.duration('HEARTBEAT_INTERVAL', 5_000, { minMs: 50, maxMs: 600_000 });
  const cfg: DirectoryConfig = {
    ...server,
    directoryId,
    advertise: r.hostPort('DIRECTORY_ADVERTISE', server.listen),
    dataDir: flags.data ?? r.string('DATA_DIR', `./data/${directoryId}`),
    peers: list(r.string('DIRECTORY_PEERS', '')),
    // REDIS_URL set but empty selects the in-process lease (haystack dev without Redis).
    redisUrl:
      env.REDIS_URL !== undefined && env.REDIS_URL.trim() === ''
        ? ''
        : r.matching('REDIS_URL', 'redis://127.0.0.1:6379', REDIS_URL, REDIS_URL_SHAPE, redactedRedisUrl),
    leaseKey: r.matching(
      'LEASE_KEY',
      'haystack:directory:leader',
      /^[^\s]{1,200}$/,
      'a Redis key without spaces',
    ),
    leaderTimeoutMs: r.duration('LEADER_TIMEOUT', 2_000, { minMs: 200, maxMs: 600_000 }),
    leaderHeartbeatIntervalMs: r.duration('LEADER_HEARTBEAT_INTERVAL', 500, { minMs: 50, maxMs: 300_000 }),
    heartbeatIntervalMs,
    storeDegradedAfterMs: r.duration('STORE_DEGRADED_AFTER', heartbeatIntervalMs * 2, { minMs: 50 }),
    storeDownAfterMs: r.duration('STORE_DOWN_AFTER', heartbeatIntervalMs * 3, { minMs: 50 }),
    followerSyncIntervalMs: r.duration('FOLLOWER_SYNC_INTERVAL', 500, { minMs: 1, maxMs: 60_000 }),
    watchStallMs: r.duration('WATCH_STALL_TIMEOUT', DEFAULT_WATCH_STALL_MS, { minMs: 2_000, maxMs: 600_000 }),
    snapshotIntervalMs: r.duration('SNAPSHOT_INTERVAL', 60_000, { minMs: 100 }),
    logRetainEntries: r.int('LOG_RETAIN_ENTRIES', 10_000, { min: 0, max: 10_000_000 }),
    readIndexWaitMs: r.duration('READ_INDEX_WAIT', 500, { minMs: 0, maxMs: 60_000 }),
    allocationTtlMs: r.duration('ALLOCATION_TTL', 3_600_000, { minMs: 1000 }),
    defaultReplicaCount: r.int('DEFAULT_REPLICA_COUNT', 3, { min: 1, max: 16 }),
    minFreeBytes: r.size('MIN_FREE_BYTES', 100 * 1024 * 1024),
    placementGroups: r.int('PLACEMENT_GROUPS', 64, { min: 0, max: MAX_PLACEMENT_GROUPS }),
    placementReplaceAfterMs: r.duration('PLACEMENT_REPLACE_AFTER', 60_000, { minMs: 100 }),
    placementExpectedStores: r.int('PLACEMENT_EXPECTED_STORES', 0, { min: 0, max: 100_000 }),
    placementExpectedWaitMs: r.duration('PLACEMENT_EXPECTED_WAIT', 60_000, { minMs: 0, maxMs: 86_400_000 }),
    placementAutoBalanceAfterMs: r.duration('PLACEMENT_AUTO_BALANCE_AFTER', 60_000, {
      minMs: 0,
      maxMs: 86_400_000,
    }),
  };
  if (cfg.leaderHeartbeatIntervalMs * 2 > cfg.leaderTimeoutMs) {
    r.problem(
      'LEADER_HEARTBEAT_INTERVAL must be at most half of LEADER_TIMEOUT (the leader must get a renewal through before its validity runs out)',
    );
  }
  // At or below the heartbeat period every store turns DEGRADED between two heartbeats:
  // no placement group is ever created and every write is UNAVAILABLE.
  if (cfg.storeDegradedAfterMs <= cfg.heartbeatIntervalMs) {
    r.problem(
      `STORE_DEGRADED_AFTER (${cfg.storeDegradedAfterMs} ms) must be longer than HEARTBEAT_INTERVAL (${cfg.heartbeatIntervalMs} ms), else every store is DEGRADED between two heartbeats`,
    );
  }
  if (cfg.storeDownAfterMs <= cfg.storeDegradedAfterMs) {
    r.problem('STORE_DOWN_AFTER must be longer than STORE_DEGRADED_AFTER');
  }
  r.done();
  return cfg;
}
