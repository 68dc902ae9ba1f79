import { readFileSync } from 'node:fs';
import { create } from '@bufbuild/protobuf';
import { Code, createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { DirectoryService, HeartbeatRequestSchema } from '../../gen/haystack/v1/directory_pb.js';
import { HaystackClient, HaystackError } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { testTransport } from '../helpers/pki.js';
import { bytes } from '../helpers/store-client.js';

/**
 * Issue 12: the gateway and the replication manager pin the exact store the
 * directory names on every store call (spiffe://haystack/store/<id>), not just
 * the role. The directory is made to map store-1 to store-2's address (store-1
 * is gone; a heartbeat with store-1's certificate claims store-2's address, as a
 * stale record or a stolen key would): every call meant for store-1 reaches
 * store-2 and must be refused FAILED_PRECONDITION naming both identities, never
 * taken as store-1's answer.
 */

let cluster: Cluster;
let sdk: HaystackClient;
const forged = new AbortController();

async function until(what: string, check: () => Promise<boolean>, deadlineMs = 60_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const MISMATCH = 'the server is spiffe://haystack/store/store-2, expected spiffe://haystack/store/store-1';

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 1,
    stores: 3,
    gateways: 1,
    // The manager scrubs every store often and logs each failed call (debug).
    replicationEnv: { LOG_LEVEL: 'debug', SCRUB_INTERVAL: '500ms' },
  });
  sdk = new HaystackClient({ url: cluster.url });
});
afterAll(async () => {
  forged.abort();
  await cluster?.stop();
});

describe('the gateway and the replication manager pin the store the directory names', () => {
  it("with store-1 mapped to store-2's address, a gateway Delete answers FAILED_PRECONDITION naming both identities and the manager's calls to store-1 are refused", async () => {
    const blob = await sdk.upload(bytes(20_000, 1201));
    const addr2 = cluster.stores[2]!.address;
    await cluster.stores[1]!.kill();

    // A heartbeat with store-1's certificate that claims store-2's address, kept open.
    const dir = createClient(
      DirectoryService,
      await testTransport(cluster.directories[0]!.address, 'directory', { role: 'store', id: 'store-1' }),
    );
    const beats = (async function* () {
      while (!forged.signal.aborted) {
        yield create(HeartbeatRequestSchema, {
          storeId: 'store-1',
          address: addr2,
          capacityBytes: 1n << 40n,
          freeBytes: 1n << 39n,
          writable: true,
        });
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    void (async () => {
      for await (const _ of dir.heartbeat(beats, { signal: forged.signal }));
    })().catch(() => undefined);
    await until("the directory maps store-1 to store-2's address, HEALTHY", async () => {
      const s = (await cluster.status()).stores.find((x) => x.storeId === 'store-1');
      return s?.address === addr2 && s.health === StoreHealth.HEALTHY;
    });

    // The gateway follows the map: until it does, its delete reaches the dead store-1 (UNAVAILABLE).
    let err: HaystackError | undefined;
    await until('the gateway sends store-1 its delete at the new address', async () => {
      try {
        await sdk.delete(blob.id);
        err = undefined;
        return true; // accepted: store-2 answered for store-1
      } catch (e) {
        if (!(e instanceof HaystackError)) throw e;
        err = e;
        return err.message.includes(MISMATCH);
      }
    });
    expect(err?.code, err?.message).toBe(Code.FailedPrecondition);
    expect(err?.message).toContain('store-1: ');

    // The manager scrubs every HEALTHY store: its call to store-1 is refused too.
    const log = `${cluster.dataDir}/replication.log`;
    await until("the manager's scrub of store-1 is refused", async () =>
      readFileSync(log, 'utf8')
        .split('\n')
        .some((l) => l.includes('scrub failed') && l.includes('"store":"store-1"') && l.includes(MISMATCH)),
    );
  });
});
