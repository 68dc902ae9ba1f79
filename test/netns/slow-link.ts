import { createClient } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { type NetnsCluster, PORTS, sleep } from './cluster.js';
import { type RelayProcess, type RelayStats, startRelayProcess } from './latency-proxy.js';
import type { Partition } from './partitions.js';

/** Added one-way delay of the slow link, ms (a round trip costs twice this), and its jitter. */
export const SLOW_LINK_DELAY_MS = 100;
const JITTER_MS = 10;
/** The relay's port, next to the store's own in the store's namespace. */
const RELAY_PORT = PORTS.store + 10;
/** Bytes each gateway must have sent through the relay before the outage is timed (the load's writes are 1–96 KiB). */
const GATEWAY_BYTES = 16 * 1024;
/**
 * How long the gateways get to send it. The store comes back from its restart DOWN, its
 * memberships JOINING, and only the load's writes to its groups cross the relay until
 * backfill promotes it: 27–58 s at load 20–30, over 60 s at load ~35 (2026-12-04).
 */
const GATEWAYS_THROUGH_MS = 180_000;

/**
 * The slow link (issue 14): every connection to `store1` — from the gateways, the
 * replication managers, the other stores — crosses a userspace relay
 * (latency-proxy.ts; these kernels have no `tc netem`) that holds each chunk 100 ms
 * (+0–10 ms) each way. The relay runs in store1's namespace on its address, port
 * 8011; store1 is restarted with `STORE_ADVERTISE` at the relay (its certificate
 * names the IP, not the port), so the directory hands that address out, as a
 * deploy/ config would. Healing restarts it advertising its own port again.
 *
 * Checked before the outage is timed, so a relay that does nothing or that nobody
 * uses fails the run: the directory lists store-1 at the relay; GetStats through it
 * takes ≥ 2 × delay and ≥ delay longer than direct (minimum of 8, interleaved); every
 * gateway has sent ≥ 16 KiB through it (the load's reads and writes found the path).
 */
export function slowStore(): Partition {
  const store = 'store1';
  const storeId = 'store-1';
  let relay: RelayProcess | undefined;
  return {
    name: `slow link: every connection to one store through a ${SLOW_LINK_DELAY_MS} ms relay (STORE_ADVERTISE)`,
    async apply(nc) {
      relay = await startRelayProcess(nc.net.wrapper(store), {
        listen: nc.addr(store, RELAY_PORT),
        target: nc.addr(store, PORTS.store),
        delayMs: SLOW_LINK_DELAY_MS,
        jitterMs: JITTER_MS,
      });
      await nc.restartWith(store, { STORE_ADVERTISE: relay.listen });
      await advertisedAt(nc, storeId, relay.listen);
      const p = await probe(nc, relay.listen, nc.addr(store, PORTS.store));
      if (p.viaMs < 2 * SLOW_LINK_DELAY_MS || p.viaMs - p.directMs < SLOW_LINK_DELAY_MS)
        throw new Error(
          `slow link not in effect: GetStats ${p.viaMs} ms through the relay, ${p.directMs} ms direct (minimum of 8); ` +
            `expected ≥ ${2 * SLOW_LINK_DELAY_MS} ms and ≥ ${SLOW_LINK_DELAY_MS} ms more`,
        );
      const t0 = Date.now();
      const s = await gatewaysThrough(nc, relay);
      return (
        `${store} behind ${relay.listen} (+${SLOW_LINK_DELAY_MS} ms each way); GetStats ${p.viaMs} ms via the relay, ` +
        `${p.directMs} ms direct; ${bySource(nc, s)} through it after ${Date.now() - t0} ms`
      );
    },
    async heal(nc) {
      const r = relay;
      if (!r) return;
      const s = await r.freshStats();
      // Restarted on its own address first: the relay's stop then cuts only stale connections.
      await nc.restartWith(store);
      await r.stop();
      process.stderr.write(
        `[netns] slow link: ${s.accepted} connections, ${kib(s.up.bytes)} up / ${kib(s.down.bytes)} down, ` +
          `held ≥ ${Math.round(Math.min(s.up.minHeldMs, s.down.minHeldMs))} ms, paused ${s.up.pauses + s.down.pauses}×; ${bySource(nc, s)}\n`,
      );
    },
  };
}

const kib = (n: number) => `${Math.round(n / 1024)} KiB`;

/** "gw0 120 KiB, repl1 3 KiB, …": who sent how much through the relay. */
function bySource(nc: NetnsCluster, s: RelayStats): string {
  const names = [...nc.names.gateways, ...nc.names.managers, ...nc.names.stores, ...nc.names.directories];
  const nameOf = (ip: string) =>
    names.find((n) => nc.net.ipOf(n) === ip) ?? (ip === nc.net.hostIp ? 'test' : ip);
  return Object.entries(s.upBySource)
    .map(([ip, n]) => `${nameOf(ip)} ${kib(n)}`)
    .join(', ');
}

/** Waits (≤ 60 s) until the directory lists `storeId` HEALTHY at `address`. */
async function advertisedAt(nc: NetnsCluster, storeId: string, address: string): Promise<void> {
  let last = '';
  for (const end = Date.now() + 60_000; Date.now() < end; await sleep(200)) {
    const rec = (await nc.status().catch(() => undefined))?.stores.find((x) => x.storeId === storeId);
    if (rec?.address === address && rec.health === StoreHealth.HEALTHY) return;
    last = rec ? `${rec.address} (${StoreHealth[rec.health]})` : 'not listed';
  }
  throw new Error(`the directory does not list ${storeId} at ${address} within 60 s: ${last}`);
}

/**
 * The shortest of 8 GetStats round trips (ms) through the relay and direct to the
 * store, interleaved so both see the same machine load; the minimum, as load only
 * adds time.
 */
async function probe(
  nc: NetnsCluster,
  via: string,
  direct: string,
): Promise<{ viaMs: number; directMs: number }> {
  const clients = [via, direct].map((a) => createClient(StoreService, nc.transport(a, 'store')));
  const best = [Number.POSITIVE_INFINITY, Number.POSITIVE_INFINITY];
  for (let i = 0; i < 8; i++) {
    for (const [k, c] of clients.entries()) {
      const t0 = performance.now();
      await c.getStats({}, { timeoutMs: 10_000 });
      best[k] = Math.min(best[k] as number, performance.now() - t0);
    }
  }
  return { viaMs: Math.round(best[0] as number), directMs: Math.round(best[1] as number) };
}

/**
 * Waits (≤ GATEWAYS_THROUGH_MS) until every gateway has sent GATEWAY_BYTES through the
 * relay; its counters then.
 */
async function gatewaysThrough(nc: NetnsCluster, relay: RelayProcess): Promise<RelayStats> {
  let s = await relay.freshStats();
  for (const end = Date.now() + GATEWAYS_THROUGH_MS; Date.now() < end; await sleep(200)) {
    s = await relay.freshStats();
    if (nc.names.gateways.every((g) => (s.upBySource[nc.net.ipOf(g)] ?? 0) >= GATEWAY_BYTES)) return s;
  }
  throw new Error(
    `the gateways did not use the slow link: ${bySource(nc, s) || 'nothing'} through it after ${GATEWAYS_THROUGH_MS / 1000} s (need ${kib(GATEWAY_BYTES)} from each gateway)`,
  );
}
