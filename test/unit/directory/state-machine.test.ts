import { equals } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlobState, StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { type LogEntry, MetadataSnapshotSchema } from '../../../gen/haystack/v1/metadata_pb.js';
import { MetadataState } from '../../../internal/directory/state-machine.js';
import {
  blobCommitted,
  blobDeleted,
  healthChanged,
  leaderChanged,
  replicasChanged,
  storeRegistered,
} from '../../helpers/directory-entries.js';

function applyAll(entries: LogEntry[]): MetadataState {
  const s = new MetadataState();
  for (const e of entries) s.apply(e);
  return s;
}

describe('metadata state machine', () => {
  it('commits blobs with the entry index as version and lists them in id order', () => {
    const s = applyAll([
      leaderChanged(1, 1, 'd0'),
      blobCommitted(2, 1, 'b', ['s1', 's2']),
      blobCommitted(3, 1, 'a', ['s1']),
      blobCommitted(4, 1, 'c', ['s3']),
    ]);
    expect(s.appliedIndex).toBe(4n);
    expect(s.leaderId).toBe('d0');
    expect(s.leaderTerm).toBe(1n);
    expect(s.active('b')?.version).toBe(2n);
    expect(s.active('b')?.state).toBe(BlobState.ACTIVE);
    expect(s.list('', '', 10).blobs.map((b) => b.blobId)).toEqual(['a', 'b', 'c']);
    expect(s.list('', '', 2)).toMatchObject({ more: true });
    expect(s.list('', 'a', 10).blobs.map((b) => b.blobId)).toEqual(['b', 'c']);
    expect(s.list('b', '', 10).blobs.map((b) => b.blobId)).toEqual(['b']);
    expect(s.liveBlobs).toBe(3);
    expect([...s.replicaHistogram()].sort()).toEqual([
      [1, 2],
      [2, 1],
    ]);
  });

  it('refuses an entry that does not follow the applied index', () => {
    const s = applyAll([leaderChanged(1, 1, 'd0')]);
    expect(() => s.apply(blobCommitted(3, 1, 'x', ['s1']))).toThrow(/does not follow/);
  });

  it('keeps a deleted blob as pending tombstones until every replica store confirms', () => {
    const s = applyAll([blobCommitted(1, 1, 'x', ['s1', 's2']), blobDeleted(2, 1, 'x')]);
    expect(s.active('x')).toBeUndefined();
    expect(s.blobs.get('x')?.state).toBe(BlobState.DELETED);
    expect(s.liveBlobs).toBe(0);
    expect([...(s.tombstones.get('s1') ?? [])]).toEqual(['x']);
    expect([...(s.tombstones.get('s2') ?? [])]).toEqual(['x']);
    expect(s.list('', '', 10).blobs).toEqual([]);
    s.apply(replicasChanged(3, 1, 'x', { remove: ['s1'] }));
    expect(s.tombstones.has('s1')).toBe(false);
    expect(s.blobs.get('x')?.replicas.map((r) => r.storeId)).toEqual(['s2']);
    s.apply(replicasChanged(4, 1, 'x', { remove: ['s2'] }));
    expect(s.blobs.has('x')).toBe(false);
    expect(s.tombstones.size).toBe(0);
    // Deleting twice or deleting the unknown is a no-op.
    s.apply(blobDeleted(5, 1, 'x'));
    expect(s.appliedIndex).toBe(5n);
  });

  it('adds and removes replicas, changes the target, ignores duplicates', () => {
    const s = applyAll([
      blobCommitted(1, 1, 'x', ['s1']),
      replicasChanged(2, 1, 'x', {
        add: [
          { storeId: 's2', volumeId: 4 },
          { storeId: 's1', volumeId: 9 },
        ],
        target: 2,
      }),
    ]);
    const b = s.active('x');
    expect(b?.replicas.map((r) => [r.storeId, r.volumeId])).toEqual([
      ['s1', 1],
      ['s2', 4],
    ]);
    expect(b?.targetReplicaCount).toBe(2);
    expect(b?.version).toBe(2n);
    s.apply(replicasChanged(3, 1, 'x', { remove: ['s1'] }));
    expect(s.active('x')?.replicas.map((r) => r.storeId)).toEqual(['s2']);
  });

  it('registers stores and records health changes', () => {
    const s = applyAll([
      storeRegistered(1, 1, 's1', StoreHealth.HEALTHY, 'z1'),
      healthChanged(2, 1, 's1', StoreHealth.DOWN),
      healthChanged(3, 1, 'nope', StoreHealth.DOWN),
    ]);
    expect(s.stores.get('s1')?.zone).toBe('z1');
    expect(s.storeHealth('s1')).toBe(StoreHealth.DOWN);
    expect(s.storeHealth('nope')).toBe(StoreHealth.UNSPECIFIED);
  });

  it('a snapshot restores the same state, tombstones included (property)', () => {
    const op = fc.oneof(
      fc.record({
        k: fc.constant('commit'),
        id: fc.constantFrom('a', 'b', 'c', 'd'),
        n: fc.integer({ min: 0, max: 3 }),
      }),
      fc.record({ k: fc.constant('delete'), id: fc.constantFrom('a', 'b', 'c', 'd'), n: fc.constant(0) }),
      fc.record({
        k: fc.constant('remove'),
        id: fc.constantFrom('a', 'b', 'c', 'd'),
        n: fc.integer({ min: 0, max: 3 }),
      }),
      fc.record({
        k: fc.constant('store'),
        id: fc.constantFrom('s0', 's1', 's2'),
        n: fc.integer({ min: 1, max: 3 }),
      }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), fc.nat(), (ops, cut) => {
        const entries: LogEntry[] = ops.map((o, i) => {
          const idx = i + 1;
          switch (o.k) {
            case 'commit':
              return blobCommitted(idx, 1, o.id, ['s0', 's1', 's2'].slice(0, o.n));
            case 'delete':
              return blobDeleted(idx, 1, o.id);
            case 'remove':
              return replicasChanged(idx, 1, o.id, { remove: [`s${o.n}`] });
            default:
              return storeRegistered(idx, 1, o.id, o.n as StoreHealth);
          }
        });
        const k = entries.length === 0 ? 0 : cut % (entries.length + 1);
        const a = applyAll(entries.slice(0, k));
        const b = MetadataState.fromSnapshot(a.toSnapshot());
        for (const e of entries.slice(k)) {
          a.apply(e);
          b.apply(e);
        }
        expect(equals(MetadataSnapshotSchema, a.toSnapshot(), b.toSnapshot())).toBe(true);
        expect(b.liveBlobs).toBe(a.liveBlobs);
        expect([...b.tombstones].map(([s, ids]) => [s, [...ids].sort()]).sort()).toEqual(
          [...a.tombstones].map(([s, ids]) => [s, [...ids].sort()]).sort(),
        );
        expect(a.liveBlobs).toBe(a.list('', '', 1000).blobs.length);
      }),
    );
  });
});
