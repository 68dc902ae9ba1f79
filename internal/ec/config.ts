import type { EnvReader } from '../config/env.js';
import { MAX_DATA_SHARDS, MAX_PARITY_SHARDS } from './codec.js';
import type { CodeSettings } from './params.js';

/**
 * The cold tier's settings (docs/design/ec-tier.md), read by the replication
 * manager's config module with its EnvReader, so a bad value exits naming the
 * variable:
 *
 *   EC_ENABLED          move cold blobs to the erasure-coded tier (default false)
 *   EC_DATA_SHARDS      k; 0 chooses by store count (default 0)
 *   EC_PARITY_SHARDS    m; 0 chooses by store count (default 0)
 *   EC_MIN_REDUNDANCY   losses a code must survive (default 2; 1 allows RS(2,1) on 3 stores)
 *   EC_COLD_RATE        reads/min below which a blob is cold (default 0.1)
 *   EC_COLD_AFTER       how long a blob stays below EC_COLD_RATE before it is encoded (default 7 days)
 *   EC_WARM_RATE        reads/min at which a cold blob gets its full replicas back (default 6)
 *   EC_SWEEP_INTERVAL   how often the manager looks through the groups for blobs to cool (default 60s)
 *   EC_MOVES_PER_SWEEP  blobs one sweep cools at most (default 64; encoding reads each blob once)
 */
export interface EcConfig extends CodeSettings {
  enabled: boolean;
  coldRatePerMin: number;
  coldAfterMs: number;
  warmRatePerMin: number;
  sweepIntervalMs: number;
  movesPerSweep: number;
}

export function readEcConfig(r: EnvReader): EcConfig {
  const cfg: EcConfig = {
    enabled: r.bool('EC_ENABLED', false),
    dataShards: r.int('EC_DATA_SHARDS', 0, { min: 0, max: MAX_DATA_SHARDS }),
    parityShards: r.int('EC_PARITY_SHARDS', 0, { min: 0, max: MAX_PARITY_SHARDS }),
    minRedundancy: r.int('EC_MIN_REDUNDANCY', 2, { min: 1, max: MAX_PARITY_SHARDS }),
    coldRatePerMin: r.float('EC_COLD_RATE', 0.1, { min: 0 }),
    coldAfterMs: r.duration('EC_COLD_AFTER', 7 * 24 * 3_600_000, { minMs: 1000 }),
    warmRatePerMin: r.float('EC_WARM_RATE', 6, { min: 0 }),
    sweepIntervalMs: r.duration('EC_SWEEP_INTERVAL', 60_000, { minMs: 100 }),
    movesPerSweep: r.int('EC_MOVES_PER_SWEEP', 64, { min: 1, max: 100_000 }),
  };
  if ((cfg.dataShards === 0) !== (cfg.parityShards === 0)) {
    r.problem(
      'EC_DATA_SHARDS and EC_PARITY_SHARDS: set both (a fixed code) or neither (chosen by store count)',
    );
  }
  if (cfg.warmRatePerMin <= cfg.coldRatePerMin) {
    r.problem(
      `EC_WARM_RATE=${cfg.warmRatePerMin} must be above EC_COLD_RATE=${cfg.coldRatePerMin}, or blobs would flap between tiers`,
    );
  }
  return cfg;
}

/** The EC_* lines of a server's --help. */
export const EC_ENV_HELP = `  EC_ENABLED             placement groups: move cold blobs to the erasure-coded tier (default false)
  EC_DATA_SHARDS / EC_PARITY_SHARDS   Reed–Solomon k and m; 0 and 0 choose by store count (default 0 / 0)
  EC_MIN_REDUNDANCY      store losses a code must survive (default 2; 1 allows RS(2,1) on 3 stores)
  EC_COLD_RATE           reads/min below which a blob is cold (default 0.1)
  EC_COLD_AFTER          how long a blob stays below EC_COLD_RATE (and since written) before it is encoded (default 7d)
  EC_WARM_RATE           reads/min at which a cold blob gets its full replicas back (default 6)
  EC_SWEEP_INTERVAL      how often the groups are looked through for blobs to cool (default 60s)
  EC_MOVES_PER_SWEEP     blobs one sweep cools at most (default 64)`;
