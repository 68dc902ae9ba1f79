import { REDIS_URL, REDIS_URL_SHAPE, redactedRedisUrl } from '../common/redis-client.js';
import { COMMON_ENV_HELP, envReader, readServerConfig, type ServerConfig } from '../config/common.js';
import type { Env } from '../config/env.js';
import { EC_ENV_HELP, type EcConfig, readEcConfig } from '../ec/config.js';
import { list } from '../store/config.js';

/** Configuration of a replication manager instance (`haystack replication`). */
export interface ReplicationConfig extends ServerConfig {
  managerId: string;
  /** host:port other processes (reporters) reach this instance at. */
  advertise: string;
  directories: string[];
  redisUrl: string;
  /** Redis key of the manager lease. */
  leaseKey: string;
  leaderTimeoutMs: number;
  leaderHeartbeatIntervalMs: number;
  defaultReplicaCount: number;
  minReplicaCount: number;
  maxReplicaCount: number;
  accessRateThreshold: number;
  highAccessThreshold: number;
  coolDownThreshold: number;
  /** Fraction below a level's rise threshold a blob must fall to count as cool (anti-flap). */
  hysteresis: number;
  deReplicationGracePeriodMs: number;
  statsReportIntervalMs: number;
  statsStalenessMs: number;
  ewmaAlpha: number;
  /** The time unit EWMA_ALPHA applies to (the seed's is one minute). */
  ewmaPeriodMs: number;
  maxTrackedBlobs: number;
  nightlyAuditHour: number;
  monitoringIntervalMs: number;
  gcIntervalMs: number;
  gcGracePeriodMs: number;
  /** How often every store is asked to scrub (0: never; stores may still report). */
  scrubIntervalMs: number;
  replicationWorkers: number;
  deReplicationWorkers: number;
  perStoreConcurrency: number;
  taskRetries: number;
  retryBackoffMs: number;
  retryBackoffMaxMs: number;
  breakerThreshold: number;
  breakerDecayMs: number;
  breakerOpenMs: number;
  /** Deadline of one copy (StoreService.Replicate). */
  copyTimeoutMs: number;
  /** Deadline of one scrub read of a shard (capped by copyTimeoutMs). */
  scrubReadTimeoutMs: number;
  /** Placement mode: how long an unlisted extra replica keeps serving reads already sent to it. */
  extraRemovalGraceMs: number;
  /** Placement mode: period of the low-rate anti-entropy round (digests of every group). */
  antiEntropyIntervalMs: number;
  /** Placement mode: groups whose digests differ that one periodic round repairs at most. */
  antiEntropyGroupsPerRound: number;
  /** Placement mode: needles younger than this are left to the next round (writes in flight). */
  antiEntropySettleMs: number;
  /**
   * Placement mode: a JOINING member is compared (and promoted) only once its store has
   * been HEALTHY, and it a member, this long in the manager's mirror (ms). Longer than the
   * gateways' MAP_STALE_AFTER, so a write that skipped it and is acknowledged is already on
   * the ACTIVE members when the comparison runs (docs/design/metadata-at-scale.md rule 2).
   */
  backfillSettleMs: number;
  /** The cold tier (EC_*, docs/design/ec-tier.md). */
  ec: EcConfig;
}

export const REPLICATION_ENV_HELP = `${COMMON_ENV_HELP}
  MANAGER_ID             instance id (default replication-<port>)
  REPLICATION_ADVERTISE  host:port reporters reach this instance at (default: the listen address)
  DIRECTORY_ADDRS        comma-separated directory host:port list
  REDIS_URL              Redis for the manager lease (default redis://127.0.0.1:6379)
  REPLICATION_LEASE_KEY  Redis key of the manager lease (default haystack:replication:lease)
  LEADER_TIMEOUT         manager lease time-to-live (default 10s)
  LEADER_HEARTBEAT_INTERVAL  lease renewal period (default 3s; shorter than LEADER_TIMEOUT less a fifth,
                         the lease's validity)
  DEFAULT_REPLICA_COUNT / MIN_REPLICA_COUNT / MAX_REPLICA_COUNT   (default 3 / 2 / 5)
  ACCESS_RATE_THRESHOLD  reads/min at which a blob gains a replica (default 60)
  HIGH_ACCESS_THRESHOLD  reads/min at which a blob goes to MAX_REPLICA_COUNT (default 150)
  COOL_DOWN_THRESHOLD    reads/min below which extra replicas may go (default 60)
  REPLICA_HYSTERESIS     a raised blob is cool only below (1 - this) x the rate that raised it (default 0.2)
  DE_REPLICATION_GRACE_PERIOD  how long a blob stays cool before losing replicas (default 120s)
  STATS_REPORT_INTERVAL  access report period of stores and gateways (default 60s)
  STATS_STALENESS_THRESHOLD  reports older than this are dropped (default 300s)
  EWMA_ALPHA             smoothing of access rates, per EWMA_PERIOD (default 0.3)
  EWMA_PERIOD            time unit of EWMA_ALPHA (default 60s)
  MAX_TRACKED_BLOBS      blobs whose heat is kept; the coldest are evicted beyond (default 200000)
  NIGHTLY_AUDIT_HOUR     local hour of the full audit (default 2)
  MONITORING_INTERVAL    scan period for blobs below the minimum (default 60s)
  GC_INTERVAL            garbage collection period (default 6h)
  GC_GRACE_PERIOD        age before an unreferenced needle is collected (default 1h)
  SCRUB_INTERVAL         how often every store is asked to scrub; 0 disables (default 24h)
  REPLICATION_WORKERS / DE_REPLICATION_WORKERS   concurrent copies / removals (default 5 / 2)
  PER_STORE_CONCURRENCY  concurrent tasks per store (default 2)
  TASK_RETRIES           retries of a failed task (default 3)
  RETRY_BACKOFF / RETRY_BACKOFF_MAX  backoff base x 2^(n-1), capped (default 5s / 60s)
  BREAKER_THRESHOLD      failures that open a store's circuit breaker (default 5)
  BREAKER_DECAY          one failure is forgotten per this much time (default 600s)
  BREAKER_OPEN_TIME      an open breaker lets a trial task through after this (default 30s)
  COPY_TIMEOUT           deadline of one copy (default 120s)
  SCRUB_READ_TIMEOUT     cold tier: deadline of one shard read by the scrub (default 10s)
  EXTRA_REMOVAL_GRACE    placement groups: an unlisted extra replica is tombstoned this long after (default 30s)
  ANTI_ENTROPY_INTERVAL  placement groups: period of the digest comparison of every group (default 10m)
  ANTI_ENTROPY_GROUPS    placement groups: differing groups one periodic round repairs at most (default 4)
  ANTI_ENTROPY_SETTLE    placement groups: needles younger than this wait for the next round (default 30s)
  BACKFILL_SETTLE        placement groups: a JOINING member is compared and promoted only after its
                         store has been HEALTHY and it a member this long; must exceed the gateways'
                         MAP_STALE_AFTER plus message delays (default 10s, twice MAP_STALE_AFTER's
                         default; 0 only where no gateway writes, e.g. tests)
${EC_ENV_HELP}`;

/**
 * The manager lease's safety margin (ms): LEADER_TIMEOUT / 5, rounded down. A lease
 * counts valid until `sent + LEADER_TIMEOUT - margin` (LeaseKeeper), which covers
 * clock drift between this process and Redis.
 */
export function managerLeaseMarginMs(leaderTimeoutMs: number): number {
  return Math.floor(leaderTimeoutMs / 5);
}

/** How long a won or renewed manager lease counts valid (ms): LEADER_TIMEOUT less its margin. */
export function managerLeaseValidityMs(leaderTimeoutMs: number): number {
  return leaderTimeoutMs - managerLeaseMarginMs(leaderTimeoutMs);
}

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
    advertise: r.hostPort('REPLICATION_ADVERTISE', server.listen),
    directories: list(r.string('DIRECTORY_ADDRS', '')),
    redisUrl: r.matching('REDIS_URL', 'redis://127.0.0.1:6379', REDIS_URL, REDIS_URL_SHAPE, redactedRedisUrl),
    leaseKey: r.string('REPLICATION_LEASE_KEY', 'haystack:replication:lease'),
    leaderTimeoutMs: r.duration('LEADER_TIMEOUT', 10_000, { minMs: 200, maxMs: 600_000 }),
    leaderHeartbeatIntervalMs: r.duration('LEADER_HEARTBEAT_INTERVAL', 3_000, { minMs: 50, maxMs: 300_000 }),
    defaultReplicaCount: r.int('DEFAULT_REPLICA_COUNT', 3, { min: 1, max: 16 }),
    minReplicaCount: r.int('MIN_REPLICA_COUNT', 2, { min: 1, max: 16 }),
    maxReplicaCount: r.int('MAX_REPLICA_COUNT', 5, { min: 1, max: 32 }),
    accessRateThreshold: r.float('ACCESS_RATE_THRESHOLD', 60, { min: 0 }),
    highAccessThreshold: r.float('HIGH_ACCESS_THRESHOLD', 150, { min: 0 }),
    coolDownThreshold: r.float('COOL_DOWN_THRESHOLD', 60, { min: 0 }),
    hysteresis: r.float('REPLICA_HYSTERESIS', 0.2, { min: 0, max: 0.9 }),
    deReplicationGracePeriodMs: r.duration('DE_REPLICATION_GRACE_PERIOD', 120_000),
    statsReportIntervalMs: r.duration('STATS_REPORT_INTERVAL', 60_000, { minMs: 100 }),
    statsStalenessMs: r.duration('STATS_STALENESS_THRESHOLD', 300_000, { minMs: 100 }),
    ewmaAlpha: r.float('EWMA_ALPHA', 0.3, { min: 0.001, max: 1 }),
    ewmaPeriodMs: r.duration('EWMA_PERIOD', 60_000, { minMs: 100 }),
    maxTrackedBlobs: r.int('MAX_TRACKED_BLOBS', 200_000, { min: 10, max: 100_000_000 }),
    nightlyAuditHour: r.int('NIGHTLY_AUDIT_HOUR', 2, { min: 0, max: 23 }),
    monitoringIntervalMs: r.duration('MONITORING_INTERVAL', 60_000, { minMs: 100 }),
    gcIntervalMs: r.duration('GC_INTERVAL', 6 * 3_600_000, { minMs: 100 }),
    gcGracePeriodMs: r.duration('GC_GRACE_PERIOD', 3_600_000, { minMs: 0 }),
    scrubIntervalMs: r.duration('SCRUB_INTERVAL', 24 * 3_600_000, { minMs: 0 }),
    replicationWorkers: r.int('REPLICATION_WORKERS', 5, { min: 1, max: 256 }),
    deReplicationWorkers: r.int('DE_REPLICATION_WORKERS', 2, { min: 1, max: 256 }),
    perStoreConcurrency: r.int('PER_STORE_CONCURRENCY', 2, { min: 1, max: 256 }),
    taskRetries: r.int('TASK_RETRIES', 3, { min: 0, max: 100 }),
    retryBackoffMs: r.duration('RETRY_BACKOFF', 5_000, { minMs: 1 }),
    retryBackoffMaxMs: r.duration('RETRY_BACKOFF_MAX', 60_000, { minMs: 1 }),
    breakerThreshold: r.int('BREAKER_THRESHOLD', 5, { min: 1, max: 1000 }),
    breakerDecayMs: r.duration('BREAKER_DECAY', 600_000, { minMs: 1 }),
    breakerOpenMs: r.duration('BREAKER_OPEN_TIME', 30_000, { minMs: 1 }),
    copyTimeoutMs: r.duration('COPY_TIMEOUT', 120_000, { minMs: 100 }),
    scrubReadTimeoutMs: r.duration('SCRUB_READ_TIMEOUT', 10_000, { minMs: 50, maxMs: 3_600_000 }),
    extraRemovalGraceMs: r.duration('EXTRA_REMOVAL_GRACE', 30_000, { minMs: 0, maxMs: 3_600_000 }),
    antiEntropyIntervalMs: r.duration('ANTI_ENTROPY_INTERVAL', 600_000, { minMs: 100 }),
    antiEntropyGroupsPerRound: r.int('ANTI_ENTROPY_GROUPS', 4, { min: 1, max: 65_536 }),
    antiEntropySettleMs: r.duration('ANTI_ENTROPY_SETTLE', 30_000, { minMs: 0, maxMs: 3_600_000 }),
    backfillSettleMs: r.duration('BACKFILL_SETTLE', 10_000, { minMs: 0, maxMs: 3_600_000 }),
    ec: readEcConfig(r),
  };
  if (!(cfg.minReplicaCount <= cfg.defaultReplicaCount && cfg.defaultReplicaCount <= cfg.maxReplicaCount)) {
    r.problem('MIN_REPLICA_COUNT <= DEFAULT_REPLICA_COUNT <= MAX_REPLICA_COUNT must hold');
  }
  if (cfg.highAccessThreshold < cfg.accessRateThreshold) {
    r.problem('HIGH_ACCESS_THRESHOLD must be at least ACCESS_RATE_THRESHOLD');
  }
  if (cfg.coolDownThreshold > cfg.accessRateThreshold) {
    r.problem('COOL_DOWN_THRESHOLD must not exceed ACCESS_RATE_THRESHOLD (a blob would flap)');
  }
  if (cfg.leaderHeartbeatIntervalMs >= managerLeaseValidityMs(cfg.leaderTimeoutMs)) {
    r.problem(
      `LEADER_HEARTBEAT_INTERVAL must be shorter than the lease's validity, LEADER_TIMEOUT less a fifth (${managerLeaseValidityMs(cfg.leaderTimeoutMs)} ms): a renewal must get through before it runs out`,
    );
  }
  if (cfg.retryBackoffMaxMs < cfg.retryBackoffMs)
    r.problem('RETRY_BACKOFF_MAX must be at least RETRY_BACKOFF');
  r.done();
  return cfg;
}
