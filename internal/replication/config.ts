import { COMMON_ENV_HELP, envReader, readServerConfig, type ServerConfig } from '../config/common.js';
import type { Env } from '../config/env.js';
import { list } from '../store/config.js';

/** Configuration of a replication manager instance (`haystack replication`). */
export interface ReplicationConfig extends ServerConfig {
  managerId: string;
  directories: string[];
  redisUrl: string;
  defaultReplicaCount: number;
  minReplicaCount: number;
  maxReplicaCount: number;
  accessRateThreshold: number;
  highAccessThreshold: number;
  coolDownThreshold: number;
  deReplicationGracePeriodMs: number;
  statsReportIntervalMs: number;
  statsStalenessMs: number;
  ewmaAlpha: number;
  nightlyAuditHour: number;
  monitoringIntervalMs: number;
  gcGracePeriodMs: number;
}

export const REPLICATION_ENV_HELP = `${COMMON_ENV_HELP}
  MANAGER_ID             instance id (default replication-<port>)
  DIRECTORY_ADDRS        comma-separated directory host:port list
  REDIS_URL              Redis for the manager lease (default redis://127.0.0.1:6379)
  DEFAULT_REPLICA_COUNT / MIN_REPLICA_COUNT / MAX_REPLICA_COUNT   (default 3 / 2 / 5)
  ACCESS_RATE_THRESHOLD  reads/min at which a blob gains a replica (default 60)
  HIGH_ACCESS_THRESHOLD  reads/min at which a blob goes to MAX_REPLICA_COUNT (default 150)
  COOL_DOWN_THRESHOLD    reads/min below which extra replicas may go (default 60)
  DE_REPLICATION_GRACE_PERIOD  how long a blob stays cool before losing replicas (default 120s)
  STATS_REPORT_INTERVAL  access report period of stores and gateways (default 60s)
  STATS_STALENESS_THRESHOLD  reports older than this are dropped (default 300s)
  EWMA_ALPHA             smoothing of access rates (default 0.3)
  NIGHTLY_AUDIT_HOUR     local hour of the full audit (default 2)
  MONITORING_INTERVAL    scan period for blobs below the minimum (default 60s)
  GC_GRACE_PERIOD        age before an unreferenced needle is collected (default 1h)`;

export function readReplicationConfig(flags: { listen?: string }, env: Env = process.env): ReplicationConfig {
  const r = envReader(env);
  const server = readServerConfig(r, '127.0.0.1:9003', flags);
  const port = server.listen.split(':').pop();
  const cfg: ReplicationConfig = {
    ...server,
    managerId: r.matching(
      'MANAGER_ID',
      `replication-${port}`,
      /^[A-Za-z0-9._-]{1,64}$/,
      'an id of 1-64 characters [A-Za-z0-9._-]',
    ),
    directories: list(r.string('DIRECTORY_ADDRS', '')),
    redisUrl: r.matching('REDIS_URL', 'redis://127.0.0.1:6379', /^rediss?:\/\//, 'a redis:// URL'),
    defaultReplicaCount: r.int('DEFAULT_REPLICA_COUNT', 3, { min: 1, max: 16 }),
    minReplicaCount: r.int('MIN_REPLICA_COUNT', 2, { min: 1, max: 16 }),
    maxReplicaCount: r.int('MAX_REPLICA_COUNT', 5, { min: 1, max: 32 }),
    accessRateThreshold: r.float('ACCESS_RATE_THRESHOLD', 60, { min: 0 }),
    highAccessThreshold: r.float('HIGH_ACCESS_THRESHOLD', 150, { min: 0 }),
    coolDownThreshold: r.float('COOL_DOWN_THRESHOLD', 60, { min: 0 }),
    deReplicationGracePeriodMs: r.duration('DE_REPLICATION_GRACE_PERIOD', 120_000),
    statsReportIntervalMs: r.duration('STATS_REPORT_INTERVAL', 60_000, { minMs: 100 }),
    statsStalenessMs: r.duration('STATS_STALENESS_THRESHOLD', 300_000, { minMs: 100 }),
    ewmaAlpha: r.float('EWMA_ALPHA', 0.3, { min: 0.001, max: 1 }),
    nightlyAuditHour: r.int('NIGHTLY_AUDIT_HOUR', 2, { min: 0, max: 23 }),
    monitoringIntervalMs: r.duration('MONITORING_INTERVAL', 60_000, { minMs: 100 }),
    gcGracePeriodMs: r.duration('GC_GRACE_PERIOD', 3_600_000, { minMs: 0 }),
  };
  if (!(cfg.minReplicaCount <= cfg.defaultReplicaCount && cfg.defaultReplicaCount <= cfg.maxReplicaCount)) {
    r.problem('MIN_REPLICA_COUNT <= DEFAULT_REPLICA_COUNT <= MAX_REPLICA_COUNT must hold');
  }
  if (cfg.highAccessThreshold < cfg.accessRateThreshold) {
    r.problem('HIGH_ACCESS_THRESHOLD must be at least ACCESS_RATE_THRESHOLD');
  }
  r.done();
  return cfg;
}
