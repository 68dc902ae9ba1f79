import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { WatchMetadataResponseSchema } from '../../../gen/haystack/v1/directory_pb.js';
import { LogEntrySchema, PlacementMemberState } from '../../../gen/haystack/v1/metadata_pb.js';
import { MemoryBlobCache } from '../../../internal/cache/memory-cache.js';
import { CLUSTER_MODE_HEADER } from '../../../internal/directory/peers.js';
import { BlobGateway } from '../../../internal/gateway/blobs.js';
import type { PlacementStoreApi } from '../../../internal/gateway/group-path.js';
import { FakeDirectory, FakeStore, leaderEntry, queuedView } from './fakes.js';

/**
 * A new cluster's leader creates its placement groups seconds after it starts; a
 * gateway learns of them from the push stream. A call the gateway sends down the
 * directory path before its view has applied them is refused by the directory
 * (FAILED_PRECONDITION, `haystack-cluster-mode: placement`) before anything is done.
 * The gateway must then catch up and go by group, not hand the refusal to the caller
 * (seen once in CI: the first upload of a fresh cluster failed FAILED_PRECONDITION).
 */

const log = pino({ level: 'silent' });
type Change = MessageInitShape<typeof LogEntrySchema>['change'];

/** Stores s1..s3 registered and applied; one placement group of all three, held back until `deliverGroups`. */
async function lagging(readyTimeoutMs: number) {
  let index = 1n;
  const { view, deliver } = queuedView([leaderEntry(1n, 5n, 'directory-0')]);
  const entries = (changes: Change[]) =>
    create(WatchMetadataResponseSchema, {
      msg: {
        case: 'entries',
        value: {
          entries: changes.map((change) => create(LogEntrySchema, { index: ++index, term: 5n, change })),
        },
      },
    });
  const peers = new Map<string, FakeStore>();
  const stores = ['s1', 's2', 's3'].map((id) => new FakeStore(id, peers));
  for (const s of stores) peers.set(s.storeId, s);
  const directory = new FakeDirectory(stores);
  deliver(
    entries(
      stores.map((s, i) => ({
        case: 'storeRegistered' as const,
        value: { store: { storeId: s.storeId, address: `127.0.0.1:${i + 1}`, health: StoreHealth.HEALTHY } },
      })),
    ),
  );
  const groups = entries([
    {
      case: 'placementChanged',
      value: {
        groupCount: 1,
        groups: [
          {
            group: 0,
            members: stores.map((s) => ({ storeId: s.storeId, state: PlacementMemberState.ACTIVE })),
          },
        ],
      },
    },
  ]);
  // The leader has committed the groups; the view has not received them.
  directory.leaderCommit = index;
  const refused: string[] = [];
  const refuse = (method: string) => {
    refused.push(method);
    const ce = new ConnectError(
      `${method} is not used on a cluster with placement groups`,
      Code.FailedPrecondition,
    );
    ce.metadata.set(CLUSTER_MODE_HEADER, 'placement');
    return ce;
  };
  directory.allocateWrite = async () => {
    throw refuse('AllocateWrite');
  };
  directory.locate = async () => {
    throw refuse('Locate');
  };
  // A delete by group (extra replicas only) is answered; a per-blob delete is refused.
  const deleteExtras = directory.delete.bind(directory);
  directory.delete = async (req: { blobId: string; perBlob?: boolean }) => {
    if (req.perBlob) throw refuse('Delete');
    return deleteExtras(req);
  };
  view.start();
  await view.whenReady(5_000);
  for (let i = 0; i < 500 && view.state.stores.size < 3; i++) await new Promise((r) => setTimeout(r, 10));
  const gw = new BlobGateway({
    directory,
    store: (s) => peers.get(s.storeId)!.api(),
    cache: new MemoryBlobCache({ ttlMs: 60_000, maxBlobSize: 0, maxBytes: 1e8 }),
    log,
    maxUploadSize: 1e7,
    storeTimeoutMs: 2_000,
    placement: {
      view,
      stores: (s) =>
        ({
          delete: async (req: { blobId: string }) => ({
            found: peers.get(s.storeId)!.blobs.delete(req.blobId),
          }),
        }) as unknown as PlacementStoreApi,
      readyTimeoutMs,
      minReplicas: 2,
      mapStaleAfterMs: 1_000,
    },
  });
  return { view, gw, stores, directory, refused, deliverGroups: () => deliver(groups) };
}

const upload = (gw: BlobGateway, blobId: string, data: Buffer) =>
  gw.write(
    { blobId, size: BigInt(data.length), contentType: '', sha256: '', replicaCount: 0 },
    (async function* () {
      yield data;
    })(),
  );

describe('a gateway whose placement map lags the directory that just created the groups', () => {
  it('a write refused on the directory path goes by placement group once the view has caught up', async () => {
    const c = await lagging(5_000);
    try {
      expect(c.view.state.placement.enabled).toBe(false);
      // The push arrives while the gateway is refused (as it would, moments later).
      const refuse = c.directory.allocateWrite;
      c.directory.allocateWrite = async (req) => {
        setTimeout(c.deliverGroups, 50);
        return refuse(req);
      };
      const data = Buffer.from('the first upload of a fresh cluster');
      const info = await upload(c.gw, 'a', data);
      expect(info.size).toBe(BigInt(data.length));
      expect(c.refused).toEqual(['AllocateWrite']);
      expect(c.view.state.placement.enabled).toBe(true);
      expect(c.stores.filter((s) => s.blobs.has('a')).map((s) => s.storeId)).toEqual(['s1', 's2', 's3']);
      // No per-blob commit: the placement path wrote it.
      expect(c.directory.commits).toBe(0);
    } finally {
      c.view.stop();
    }
  });

  it('a delete refused on the directory path deletes on every member of the group once the view has caught up', async () => {
    const c = await lagging(5_000);
    try {
      for (const st of c.stores)
        st.blobs.set('b', { cookie: 1n, data: Buffer.from('written by another gateway') });
      setTimeout(c.deliverGroups, 50);
      expect(await c.gw.delete('b')).toBe(true);
      expect(c.refused).toEqual(['Delete']);
      expect(c.stores.filter((s) => s.blobs.has('b'))).toEqual([]);
    } finally {
      c.view.stop();
    }
  });

  it('a FAILED_PRECONDITION without the placement mode is the answer, not a reason to catch up', async () => {
    const c = await lagging(5_000);
    try {
      c.directory.allocateWrite = async () => {
        c.refused.push('AllocateWrite');
        throw new ConnectError('some other precondition', Code.FailedPrecondition);
      };
      const err = ConnectError.from(await upload(c.gw, 'c', Buffer.from('x')).catch((e: unknown) => e));
      expect(`${Code[err.code]}: ${err.rawMessage}`).toBe('FailedPrecondition: some other precondition');
      expect(c.refused).toEqual(['AllocateWrite']);
    } finally {
      c.view.stop();
    }
  });

  it('a read refused on the directory path whose view does not catch up: UNAVAILABLE (retry), not FAILED_PRECONDITION', async () => {
    const c = await lagging(300);
    try {
      const err = ConnectError.from(await c.gw.stat('a').catch((e: unknown) => e));
      expect(Code[err.code]).toBe('Unavailable');
      expect(err.rawMessage).toContain(
        "this gateway's placement map did not catch up with the leader within 300 ms",
      );
      expect(c.refused).toEqual(['Locate']);
    } finally {
      c.view.stop();
    }
  });
});
