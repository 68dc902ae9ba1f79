import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Health, HealthCheckResponse_ServingStatus } from '../../gen/grpc/health/v1/health_pb.js';
import { ReplicationService } from '../../gen/haystack/v1/replication_pb.js';
import { AccessReporter, ReporterKind } from '../../internal/heat-client/access-reporter.js';
import { peerTransport } from '../../internal/rpc/transport.js';
import { httpsGet, securityOf, TEST_ADMIN } from '../helpers/pki.js';
import { RedisProcess } from '../helpers/redis.js';
import { grpcurl, type ServerProcess, spawnServer } from '../helpers/tools.js';

const admin = await securityOf(TEST_ADMIN);
/** A store's identity: stores (and gateways) report corruption; operators do not. */
const asStore = await securityOf({ role: 'store', id: 's' });
const transport = (address: string, as = admin) => peerTransport(address, ['replication'], {}, as);

// Two manager processes sharing a Redis lease, with no directory (the lease, the
// reporter stream and failover do not need one): only the holder takes reports.

const client = (address: string, as = admin) => createClient(ReplicationService, transport(address, as));

async function until<T>(fn: () => Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** grpc.health.v1 status of ReplicationService on an instance. */
const serving = async (address: string) =>
  (
    await createClient(Health, transport(address)).check({
      service: 'haystack.v1.ReplicationService',
    })
  ).status;

const codeOf = async (p: Promise<unknown>) => {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return ConnectError.from(err).code;
  }
};

describe('replication manager high availability (real Redis, two processes)', () => {
  let redis: RedisProcess;
  const managers: ServerProcess[] = [];
  let reporter: AccessReporter | undefined;

  const start = (id: string) =>
    spawnServer({
      name: id,
      args: ['replication', '--listen', '127.0.0.1:0'],
      env: {
        MANAGER_ID: id,
        REDIS_URL: redis.url,
        DIRECTORY_ADDRS: '127.0.0.1:1',
        LEADER_TIMEOUT: '2s',
        LEADER_HEARTBEAT_INTERVAL: '300ms',
        STATS_REPORT_INTERVAL: '1s',
        EWMA_PERIOD: '1s',
        LOG_LEVEL: 'warn',
      },
    });

  beforeAll(async () => {
    redis = await RedisProcess.start();
    managers.push(...(await Promise.all([start('manager-a'), start('manager-b')])));
  });
  afterAll(async () => {
    await reporter?.stop();
    await Promise.all(managers.map((m) => m.stop()));
    await redis?.stop();
  });

  it('one instance acts; reports reach it; the standby refuses; kill -9 hands over within seconds', async () => {
    const stats = async () =>
      Promise.all(
        managers.map(async (m) => ({
          m,
          s: await client(m.address)
            .getStats({})
            .catch(() => undefined),
        })),
      );
    const [active, standby] = await until(
      async () => {
        const all = await stats();
        const act = all.filter((x) => x.s?.active);
        if (act.length !== 1) return undefined;
        return [act[0]!.m, all.find((x) => !x.s?.active)!.m] as const;
      },
      10_000,
      'exactly one active manager',
    );

    // Health checks (Envoy) route only to the active instance.
    expect(await serving(active.address)).toBe(HealthCheckResponse_ServingStatus.SERVING);
    expect(await serving(standby.address)).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);

    // The standby refuses reports and corruption reports, so reporters move on.
    expect(
      await codeOf(client(standby.address, asStore).reportCorruption({ storeId: 's', blobIds: ['x'] })),
    ).toBe(Code.FailedPrecondition);
    expect(await codeOf(client(standby.address).runAudit({}))).toBe(Code.FailedPrecondition);

    reporter = new AccessReporter({
      reporterId: 'store-test',
      kind: ReporterKind.STORE,
      managers: [standby.address, active.address],
      intervalMs: 200,
    });
    reporter.start();
    const reads = setInterval(() => reporter?.count('photo-1', 10), 50);
    try {
      const hot = await until(
        async () => {
          const s = await client(active.address).getStats({});
          const h = s.hotBlobs.find((b) => b.blobId === 'photo-1');
          return h && h.ratePerMinute > 100 ? h : undefined;
        },
        10_000,
        'heat on the active manager',
      );
      expect(hot.ratePerMinute).toBeGreaterThan(100);
      expect(reporter.manager).toBe(active.address);
      // grpcurl sees the same through reflection.
      const g = await grpcurl([active.address, 'haystack.v1.ReplicationService/GetStats']);
      expect(g.code).toBe(0);
      expect(JSON.parse(g.stdout).hotBlobs[0].blobId).toBe('photo-1');

      // Prometheus sees the same.
      const metrics = (await httpsGet(`https://${active.address}/metrics`)).body;
      expect(metrics).toMatch(/^haystack_replication_active(\{[^}]*\})? 1$/m);
      expect(metrics).toMatch(/^haystack_replication_access_batches_total(\{[^}]*\})? [1-9]/m);
      expect(metrics).toMatch(/^haystack_replication_tracked_blobs(\{[^}]*\})? 1$/m);
      // A lukewarm blob (a few reads, far below ACCESS_RATE_THRESHOLD) is tracked but not hot:
      // the hot list and haystack_replication_hot_blobs agree.
      reporter.count('photo-2', 1);
      await until(
        async () => ((await client(active.address).getStats({})).trackedBlobs >= 2n ? true : undefined),
        10_000,
        'photo-2 tracked',
      );
      const lukewarm = await client(active.address).getStats({});
      expect(lukewarm.hotBlobs.map((b) => b.blobId)).toEqual(['photo-1']);
      const hotMetric = (await httpsGet(`https://${active.address}/metrics`)).body;
      expect(hotMetric).toMatch(/^haystack_replication_hot_blobs(\{[^}]*\})? 1$/m);
      const standbyMetrics = (await httpsGet(`https://${standby.address}/metrics`)).body;
      expect(standbyMetrics).toMatch(/^haystack_replication_active(\{[^}]*\})? 0$/m);

      await active.kill();
      await until(
        async () => ((await client(standby.address).getStats({})).active ? true : undefined),
        10_000,
        'the standby to take over',
      );
      expect(await serving(standby.address)).toBe(HealthCheckResponse_ServingStatus.SERVING);
      // The reporter found the new active manager on its own.
      await until(
        async () => {
          const s = await client(standby.address).getStats({});
          return s.hotBlobs.some((b) => b.blobId === 'photo-1' && b.ratePerMinute > 100) ? true : undefined;
        },
        10_000,
        'heat on the new active manager',
      );
      expect(reporter.manager).toBe(standby.address);
      const s = await client(standby.address).getStats({});
      expect(s.term).toBeGreaterThan(1n);
    } finally {
      clearInterval(reads);
    }
  });
});
