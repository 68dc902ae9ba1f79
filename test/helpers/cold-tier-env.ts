/**
 * The replication manager's settings for cold-tier tests (docs/design/ec-tier.md):
 * RS(k, m) fixed, blobs cold after 3 s below 1 read/min, a sweep every 500 ms,
 * heat on a 1 s EWMA, replica raising out of the way, fast monitoring and
 * anti-entropy over `groups` groups. Overrides win.
 */
export function coldTierEnv(
  o: { k: number; m: number; groups: number },
  overrides: Record<string, string> = {},
): Record<string, string> {
  return {
    EC_ENABLED: 'true',
    EC_DATA_SHARDS: String(o.k),
    EC_PARITY_SHARDS: String(o.m),
    EC_COLD_RATE: '1',
    EC_COLD_AFTER: '3s',
    EC_SWEEP_INTERVAL: '500ms',
    EWMA_PERIOD: '1s',
    EWMA_ALPHA: '0.5',
    ACCESS_RATE_THRESHOLD: '100000',
    HIGH_ACCESS_THRESHOLD: '200000',
    COOL_DOWN_THRESHOLD: '50000',
    MONITORING_INTERVAL: '1s',
    ANTI_ENTROPY_INTERVAL: '2s',
    ANTI_ENTROPY_GROUPS: String(o.groups),
    ANTI_ENTROPY_SETTLE: '1s',
    ...overrides,
  };
}
