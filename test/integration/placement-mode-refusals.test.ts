import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryService } from '../../gen/haystack/v1/directory_pb.js';
import { CLUSTER_MODE_HEADER } from '../../internal/directory/peers.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';
import { Cluster } from '../helpers/cluster.js';
import { securityOf } from '../helpers/pki.js';
import { waitFor } from '../helpers/replication-cluster.js';

/**
 * A gateway whose copy of the placement map lags (a new cluster's groups are created
 * seconds after it starts) may send a per-blob call. Every directory, the leader and a
 * follower that forwards the call to it, refuses such a call before doing anything and
 * names the cluster's mode in `haystack-cluster-mode`, which the gateway needs to catch
 * up and go by group (a forwarded answer used to lose its metadata: connect does not
 * relay a received error's metadata). Before the groups exist no directory has them,
 * and the reads every instance answers from its own state (Locate, List) are
 * UNAVAILABLE rather than NOT_FOUND or an empty page. Real directories, Redis and
 * stores over mTLS.
 */
let cluster: Cluster;
/** Locate and List on each directory before the groups existed (the cluster started without stores). */
let beforeGroups: { name: string; locate: Outcome; list: Outcome }[] = [];

beforeAll(async () => {
  cluster = await Cluster.start({
    directories: 3,
    stores: 0,
    gateways: 0,
    replication: false,
    envoy: false,
    directoryEnv: { PLACEMENT_GROUPS: '8' },
  });
  // No store: the leader cannot create the groups yet, so every directory stands where a
  // follower that lags at a cluster's birth does.
  const leader = await cluster.leaderIndex();
  const asGateway = await securityOf({ role: 'gateway', id: 'gateway-probe' });
  beforeGroups = await Promise.all(
    [0, 1, 2].map(async (i) => {
      const dir = directory(i, asGateway);
      return {
        name: i === leader ? 'leader' : 'follower',
        locate: await outcome(dir.locate({ blobIds: ['lagging-map'] })),
        list: await outcome(dir.list({ pageSize: 10 })),
      };
    }),
  );
  await Promise.all([0, 1, 2].map(() => cluster.addStore()));
  await waitFor(
    async () => ((await cluster.status()).placementGroups.length === 8 ? true : undefined),
    60_000,
    'placement groups',
  );
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
});

interface Outcome {
  code: string;
  mode: string | null;
  message: string;
}

function directory(i: number, security: TransportSecurity) {
  return createClient(
    DirectoryService,
    cluster.transport(cluster.directories[i]!.address, 'directory', security),
  );
}

/** How a call ended: status code, message and the mode header, or 'ok'. */
async function outcome(call: Promise<unknown>): Promise<Outcome> {
  return call.then(
    () => ({ code: 'ok', mode: null, message: '' }),
    (e: unknown) => {
      const ce = ConnectError.from(e);
      return { code: Code[ce.code], mode: ce.metadata.get(CLUSTER_MODE_HEADER), message: ce.rawMessage };
    },
  );
}

describe('per-blob reads on a cluster whose placement groups are not there yet', () => {
  it('are UNAVAILABLE on the leader and on the followers, not NOT_FOUND or an empty page', () => {
    expect(beforeGroups.map((d) => d.name).sort()).toEqual(['follower', 'follower', 'leader']);
    for (const d of beforeGroups) {
      for (const o of [d.locate, d.list]) {
        expect(o, d.name).toMatchObject({ code: 'Unavailable', mode: null });
        expect(o.message, d.name).toMatch(
          d.name === 'leader'
            ? /placement groups of this new cluster are not created yet/
            : /directory directory-\d has not yet applied the placement groups \(applied index \d+\)/,
        );
      }
    }
  });
});

describe('per-blob calls on a cluster with placement groups', () => {
  it('are refused with haystack-cluster-mode: placement by the leader and by a follower that forwards them', async () => {
    const leader = await cluster.leaderIndex();
    const follower = [0, 1, 2].find((i) => i !== leader)!;
    const asGateway = await securityOf({ role: 'gateway', id: 'gateway-probe' });
    for (const [name, i] of [
      ['leader', leader],
      ['follower', follower],
    ] as const) {
      const dir = directory(i, asGateway);
      const alloc = await outcome(dir.allocateWrite({ blobId: 'lagging-map', size: 10n }));
      expect(alloc, name).toMatchObject({ code: 'FailedPrecondition', mode: 'placement' });
      expect(alloc.message).toContain('AllocateWrite is not used on a cluster with placement groups');
      const del = await outcome(dir.delete({ blobId: 'lagging-map', perBlob: true }));
      expect(del, name).toMatchObject({ code: 'FailedPrecondition', mode: 'placement' });
      expect(del.message).toContain('Delete is not used on a cluster with placement groups');
      // A delete by group (extra replicas only) is still answered.
      expect((await outcome(dir.delete({ blobId: 'lagging-map' }))).code, name).toBe('ok');
    }
  }, 60_000);
});
