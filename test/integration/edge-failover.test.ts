import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GATEWAYS_HTTP1 } from '../../internal/edge/envoy-clusters.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { bytes } from '../helpers/store-client.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/**
 * Readers hammer Envoy while a gateway, then the leader directory, is killed -9.
 * Envoy retries and ejects the dead gateway; gateways fail over between
 * directories; the SDK retries what is left (UNAVAILABLE, cut streams).
 */
describe('failover behind Envoy under a read load', () => {
  let cluster: Cluster;
  let client: HaystackClient;
  const blobs: Array<{ id: string; sha: string }> = [];

  beforeAll(async () => {
    // No cache: every read goes through the directory and the stores.
    cluster = await Cluster.start({ gateways: 2, gatewayEnv: { CACHE_BACKEND: 'none' } });
    client = new HaystackClient({ url: cluster.url, retries: 8, retryMaxMs: 1000 });
    for (let i = 0; i < 16; i++) {
      const data = bytes(32 * 1024 + i * 1000, 100 + i);
      const b = await client.upload(data);
      blobs.push({ id: b.id, sha: sha(data) });
    }
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  function readLoad(workers: number) {
    let stop = false;
    const stats = { ok: 0, failed: [] as string[] };
    const loops = Array.from({ length: workers }, async (_, w) => {
      let i = w;
      while (!stop) {
        const b = blobs[i++ % blobs.length]!;
        try {
          const { data } = await client.download(b.id, { timeoutMs: 10_000 });
          if (sha(data) !== b.sha) stats.failed.push(`${b.id}: wrong content`);
          else stats.ok++;
        } catch (err) {
          stats.failed.push(`${b.id}: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    });
    return {
      stats,
      async end() {
        stop = true;
        await Promise.all(loops);
        return stats;
      },
    };
  }

  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('loses no read when a gateway is killed', async () => {
    const load = readLoad(6);
    await sleep(1000);
    const before = load.stats.ok;
    await cluster.gateways[0]!.kill();
    await sleep(2500);
    const stats = await load.end();
    expect(stats.failed).toEqual([]);
    expect(stats.ok - before).toBeGreaterThan(20); // reads kept flowing after the kill
    // Envoy noticed: one healthy gateway left.
    await expect.poll(() => cluster.envoy!.healthyHosts('gateways'), { timeout: 5000 }).toBe(1);
    await cluster.startGateway(0);
    await cluster.envoy!.waitHealthy('gateways', 2);
    await cluster.envoy!.waitHealthy(GATEWAYS_HTTP1, 2);
  });

  it('loses no read when the leader directory is killed, and writes resume under the new leader', async () => {
    const leader = await cluster.leaderIndex();
    const load = readLoad(6);
    await sleep(1000);
    await cluster.directories[leader]!.kill();
    await sleep(1500);
    const mid = load.stats.ok;
    // A new leader takes over within LEADER_TIMEOUT.
    await expect
      .poll(async () => cluster.leaderIndex(0).catch(() => -1), { timeout: 15_000, interval: 200 })
      .toSatisfy((i: number) => i >= 0 && i !== leader);
    await sleep(1000);
    const stats = await load.end();
    expect(stats.failed, cluster.gateways.map((g) => g.logs().slice(-3000)).join('\n')).toEqual([]);
    expect(stats.ok).toBeGreaterThan(mid);
    const data = bytes(10_000, 999);
    const b = await client.upload(data);
    expect(sha((await client.download(b.id)).data)).toBe(sha(data));
  });
});
