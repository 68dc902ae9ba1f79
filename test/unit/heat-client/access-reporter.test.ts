import { describe, expect, it } from 'vitest';
import { AccessReporter, ReporterKind } from '../../../internal/heat-client/access-reporter.js';
import { freePort } from '../../helpers/redis.js';

describe('AccessReporter', () => {
  it('drops counts instead of buffering them while no manager answers', async () => {
    // A port nothing listens on: every connection attempt is refused.
    const r = new AccessReporter({
      reporterId: 'store-x',
      kind: ReporterKind.STORE,
      managers: [`127.0.0.1:${await freePort()}`],
      intervalMs: 50,
    });
    r.start();
    try {
      for (let round = 0; round < 5; round++) {
        for (let i = 0; i < 1000; i++) r.count(`blob-${i}`);
        await new Promise((res) => setTimeout(res, 60));
      }
      expect(r.connected).toBe(false);
      expect(r.sentBatches).toBe(0);
      expect(r.dropped).toBeGreaterThanOrEqual(4000);
    } finally {
      await r.stop();
    }
    // Nothing is left counted after stop: the last partial batch went (dropped) too.
    expect(r.dropped).toBe(5000);
  });

  it('caps the distinct blobs counted per interval', async () => {
    const r = new AccessReporter({
      reporterId: 'gw',
      kind: ReporterKind.GATEWAY,
      managers: [],
      intervalMs: 60_000,
      maxBlobsPerBatch: 10,
    });
    for (let i = 0; i < 15; i++) r.count(`b${i}`, 2);
    r.count('b0', 5);
    expect(r.dropped).toBe(10);
    r.flush();
    expect(r.dropped).toBe(10 + 20 + 5);
  });
});
