import { COMMON_ENV_HELP, envReader, readServerConfig, type ServerConfig } from '../config/common.js';
import type { Env } from '../config/env.js';
import { list } from '../store/config.js';

/** Configuration of a directory instance (`haystack directory`). */
export interface DirectoryConfig extends ServerConfig {
  directoryId: string;
  advertise: string;
  dataDir: string;
  /** Every directory instance, this one included (host:port). */
  peers: string[];
  redisUrl: string;
  leaderTimeoutMs: number;
  leaderHeartbeatIntervalMs: number;
  heartbeatIntervalMs: number;
  storeDegradedAfterMs: number;
  storeDownAfterMs: number;
  followerSyncIntervalMs: number;
  snapshotIntervalMs: number;
  defaultReplicaCount: number;
  minFreeBytes: number;
}

export const DIRECTORY_ENV_HELP = `${COMMON_ENV_HELP}
  DIRECTORY_ID           instance id (default directory-<port>)
  DIRECTORY_ADVERTISE    host:port peers reach this instance at (default: the listen address)
  DATA_DIR               metadata log and snapshots (flag --data; default ./data/<id>)
  DIRECTORY_PEERS        comma-separated host:port of every directory instance
  REDIS_URL              Redis for the leader lease (default redis://127.0.0.1:6379)
  LEADER_TIMEOUT         lease time-to-live (default 10s)
  LEADER_HEARTBEAT_INTERVAL  lease renewal period (default 3s)
  HEARTBEAT_INTERVAL     store heartbeat period (default 30s)
  STORE_DEGRADED_AFTER   heartbeat age that marks a store DEGRADED (default 2 x HEARTBEAT_INTERVAL)
  STORE_DOWN_AFTER       heartbeat age that marks a store DOWN (default 3 x HEARTBEAT_INTERVAL)
  FOLLOWER_SYNC_INTERVAL longest a follower batches before acknowledging (default 0.5s)
  SNAPSHOT_INTERVAL      how often the metadata is snapshotted and the log truncated (default 60s)
  DEFAULT_REPLICA_COUNT  replicas per new blob (default 3)
  MIN_FREE_BYTES         stores with less free space get no new blobs (default 100MiB)`;

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
  const heartbeatIntervalMs = r.duration('HEARTBEAT_INTERVAL', 30_000, { minMs: 50, maxMs: 600_000 });
  const cfg: DirectoryConfig = {
    ...server,
    directoryId,
    advertise: r.hostPort('DIRECTORY_ADVERTISE', server.listen),
    dataDir: flags.data ?? r.string('DATA_DIR', `./data/${directoryId}`),
    peers: list(r.string('DIRECTORY_PEERS', '')),
    redisUrl: r.matching('REDIS_URL', 'redis://127.0.0.1:6379', /^rediss?:\/\//, 'a redis:// URL'),
    leaderTimeoutMs: r.duration('LEADER_TIMEOUT', 10_000, { minMs: 200, maxMs: 600_000 }),
    leaderHeartbeatIntervalMs: r.duration('LEADER_HEARTBEAT_INTERVAL', 3_000, { minMs: 50, maxMs: 300_000 }),
    heartbeatIntervalMs,
    storeDegradedAfterMs: r.duration('STORE_DEGRADED_AFTER', heartbeatIntervalMs * 2, { minMs: 50 }),
    storeDownAfterMs: r.duration('STORE_DOWN_AFTER', heartbeatIntervalMs * 3, { minMs: 50 }),
    followerSyncIntervalMs: r.duration('FOLLOWER_SYNC_INTERVAL', 500, { minMs: 1, maxMs: 60_000 }),
    snapshotIntervalMs: r.duration('SNAPSHOT_INTERVAL', 60_000, { minMs: 100 }),
    defaultReplicaCount: r.int('DEFAULT_REPLICA_COUNT', 3, { min: 1, max: 16 }),
    minFreeBytes: r.size('MIN_FREE_BYTES', 100 * 1024 * 1024),
  };
  if (cfg.leaderHeartbeatIntervalMs >= cfg.leaderTimeoutMs) {
    r.problem('LEADER_HEARTBEAT_INTERVAL must be shorter than LEADER_TIMEOUT');
  }
  if (cfg.storeDownAfterMs <= cfg.storeDegradedAfterMs) {
    r.problem('STORE_DOWN_AFTER must be longer than STORE_DEGRADED_AFTER');
  }
  r.done();
  return cfg;
}
