import { createHash } from 'node:crypto';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { DirectoryService, type GetClusterStatusResponse } from '../../gen/haystack/v1/directory_pb.js';
import { PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { placementGroupOf } from '../../internal/common/placement.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import { Cluster } from '../helpers/cluster.js';
import { adminTlsEnv, httpsGet, securityOf, TEST_GATEWAY } from '../helpers/pki.js';
import { waitFor } from '../helpers/replication-cluster.js';
import { bytes, storeClient } from '../helpers/store-client.js';
import { exec } from '../helpers/tools.js';

/**
 * `haystack balance` and `haystack drain` against real processes (Redis, a
 * directory with placement groups, stores, the replication manager, a gateway,
 * Envoy): memberships move onto a newly added empty store; a store drained under
 * writes ends with no membership, every acknowledged blob on every member of its
 * group (none on the drained store), and killing it then loses nothing.
 */

const GROUPS = 16;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let cluster: Cluster;
let client: HaystackClient;
/** Acknowledged uploads: id → SHA-256 of the content. */
const acked = new Map<string, string>();

/** The CLI as an operator (admin certificate for the directory, the test's token for Envoy). */
async function cli(args: string[]) {
  return exec(process.execPath, ['dist/cmd/haystack.js', '--url', cluster.url, ...args], {
    env: { ...process.env, ...(await adminTlsEnv()) },
    timeoutMs: 600_000,
  });
}

async function upload(id: string, seed: number): Promise<void> {
  const data = bytes(3_000 + (seed % 7) * 1_111, seed);
  await client.upload(data, { id });
  acked.set(id, sha(data));
}

const address = (storeId: string) => cluster.stores.find((p) => p.name === storeId)!.address;

/**
 * Every acknowledged blob: its group has three distinct ACTIVE members, none of
 * them `without`, none leaving, and each holds the needle with the content's
 * SHA-256 (asked of the store itself, so no cache can hide a missing copy).
 */
async function checkAtTarget(s: GetClusterStatusResponse, without?: string): Promise<void> {
  for (const g of s.placementGroups) {
    expect(g.members.length).toBe(3);
    expect(new Set(g.members.map((m) => m.storeId)).size).toBe(3);
    for (const m of g.members) {
      expect(m.state).toBe(PlacementMemberState.ACTIVE);
      expect(m.leaving).toBe(false);
      expect(m.storeId).not.toBe(without);
    }
  }
  for (const [id, digest] of acked) {
    const g = s.placementGroups[placementGroupOf(id, GROUPS)]!;
    for (const m of g.members) {
      const n = (await storeClient(address(m.storeId)).stat({ blobId: id })).needle;
      expect(n && Buffer.from(n.sha256).toString('hex'), `${id} on ${m.storeId}`).toBe(digest);
    }
  }
}

async function readAll(): Promise<number> {
  let lost = 0;
  for (const [id, digest] of acked) {
    try {
      if (sha((await client.download(id)).data) !== digest) lost++;
    } catch {
      lost++;
    }
  }
  return lost;
}

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 1,
    stores: 3,
    gateways: 1,
    // A loaded machine must not flap stores DOWN (each flap demotes a member).
    env: { STORE_DEGRADED_AFTER: '3s', STORE_DOWN_AFTER: '6s' },
    directoryEnv: {
      PLACEMENT_GROUPS: String(GROUPS),
      PLACEMENT_REPLACE_AFTER: '600s',
      // The operator balances here (placement-auto-balance.test.ts covers the leader's own).
      PLACEMENT_AUTO_BALANCE_AFTER: '0',
    },
  });
  client = new HaystackClient({ url: cluster.url });
  await waitFor(
    async () => ((await cluster.status()).placementGroups.length === GROUPS ? true : undefined),
    120_000,
    'placement groups',
  );
  for (let i = 0; i < 24; i++) await upload(`before-${i}`, i + 1);
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
});

describe('haystack balance', () => {
  it('moves memberships onto a newly added empty store (dry run first); every blob stays at target', async () => {
    await cluster.addStore();
    await waitFor(
      async () =>
        (await cluster.status()).storeLoads.some((l) => l.storeId === 'store-3') ? true : undefined,
      120_000,
      'store-3 registered',
    );

    const dry = await cli(['--json', 'balance', '--dry-run', '--max-moves', '64']);
    expect(dry.code, dry.stderr).toBe(0);
    const plan = JSON.parse(dry.stdout) as {
      moves: { group: number; from: string; to: string }[];
      before: Record<string, number>;
      after: Record<string, number>;
    };
    expect(plan.before['store-3']).toBe(0);
    expect(plan.after['store-3']).toBe(12); // 16 groups × 3 members over 4 stores
    expect(plan.moves.length).toBe(12);
    for (const m of plan.moves) expect(m.to).toBe('store-3');
    // A dry run changes nothing.
    const untouched = await cluster.status();
    expect(untouched.storeLoads.find((l) => l.storeId === 'store-3')?.memberships).toBe(0);
    expect(untouched.placementGroups.some((g) => g.members.length !== 3)).toBe(false);

    const run = await cli(['balance', '--max-moves', '64', '--wait']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/moving group \d+: store-\d -> store-3/);
    expect(run.stdout).toMatch(/balance done/);

    const s = await cluster.status();
    for (const l of s.storeLoads) expect(l.memberships, l.storeId).toBe(12);
    await checkAtTarget(s);
    expect(await readAll()).toBe(0);

    const again = await cli(['balance']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/balanced: no move needed/);
  }, 600_000);
});

describe('haystack drain', () => {
  it('refuses callers that are not operators, unknown stores, and bad flags', async () => {
    const dir = createClient(
      DirectoryService,
      cluster.transport(cluster.directories[0]!.address, 'directory', await securityOf(TEST_GATEWAY)),
    );
    const code = await dir.drainStore({ storeId: 'store-0' }).then(
      () => 'OK',
      (e: unknown) => Code[ConnectError.from(e).code],
    );
    expect(code).toBe('PermissionDenied');
    const nosuch = await cli(['drain', 'store-9']);
    expect(nosuch.code).toBe(1);
    expect(nosuch.stderr).toMatch(/NOT_FOUND: .*no store store-9; registered: store-0, store-1/);
    const bad = await cli(['balance', '--max-moves', '5000']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--max-moves 5000/);
  }, 120_000);

  it('drains a store under writes: no membership left, every blob at target elsewhere; killing it loses nothing', async () => {
    let writing = true;
    let n = 0;
    let failed = 0;
    const writer = (async () => {
      while (writing) {
        try {
          await upload(`during-${n}`, 1000 + n);
        } catch {
          failed++;
        }
        n++;
      }
    })();
    await waitFor(() => (n >= 5 ? true : undefined), 120_000, 'writes under way');

    const drain = await cli(['--json', 'drain', 'store-0', '--wait']);
    expect(drain.code, drain.stderr).toBe(0);
    expect(JSON.parse(drain.stdout)).toMatchObject({ store: 'store-0', memberships: 0, drained: true });
    // Progress was shown while it ran (stderr, one line per change).
    writing = false;
    await writer;
    expect(n - failed).toBeGreaterThan(5);

    const stats = await cli(['--json', 'stats']);
    const doc = JSON.parse(stats.stdout) as { stores: { id: string; draining: boolean; drained: boolean }[] };
    expect(doc.stores.find((x) => x.id === 'store-0')).toMatchObject({ draining: true, drained: true });
    const human = await cli(['stats']);
    expect(human.stdout).toMatch(/store-0 .*DRAINED/);
    const stores = await cli(['stores']);
    expect(stores.code, stores.stderr).toBe(0);
    expect(stores.stdout).toMatch(
      /^store-0\s+drained\s+0 group memberships \(0 leaving\), 0 extra replicas/m,
    );
    expect(stores.stdout).toMatch(/^store-3\s+in placement\s+\d+ group memberships/m);

    const s = await cluster.status();
    await checkAtTarget(s, 'store-0');
    expect(await readAll()).toBe(0);
    // The manager's gauges (it follows the same log).
    await waitFor(
      async () => {
        const m = (await httpsGet(`https://${cluster.replication!.address}/metrics`)).body;
        return /^haystack_replication_draining_stores 1$/m.test(m) &&
          /^haystack_replication_leaving_members 0$/m.test(m)
          ? true
          : undefined;
      },
      60_000,
      'drain gauges',
    );

    // Writes after the drain skip it too.
    for (let i = 0; i < 8; i++) await upload(`after-${i}`, 5000 + i);

    await cluster.stores.find((p) => p.name === 'store-0')!.kill();
    await waitFor(
      async () => {
        const st = await cluster.status();
        return st.stores.find((x) => x.storeId === 'store-0')?.health === StoreHealth.DOWN ? true : undefined;
      },
      120_000,
      'store-0 DOWN',
    );
    await checkAtTarget(await cluster.status(), 'store-0');
    expect(await readAll()).toBe(0);

    // Three stores left for groups of three: draining another would strand its groups.
    const refused = await cli(['drain', 'store-1']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/FAILED_PRECONDITION: draining store-1 leaves 2 stores eligible/);
    const undrain = await cli(['--json', 'undrain', 'store-0']);
    expect(undrain.code, undrain.stderr).toBe(0);
    expect(JSON.parse(undrain.stdout)).toMatchObject({ store: 'store-0', draining: false, drained: false });
  }, 600_000);
});
