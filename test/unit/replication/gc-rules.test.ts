import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TaskKind } from '../../../gen/haystack/v1/replication_pb.js';
import { pastGrace, RecentCopies, referencedLocally } from '../../../internal/replication/gc-rules.js';

describe('orphan collection rules (v1 layout)', () => {
  it('a needle is referenced by a replica on that store or by any queued task but a collection', () => {
    expect(referencedLocally(['s1', 's2'], 's2', undefined)).toBe(true);
    expect(referencedLocally(['s1'], 's2', undefined)).toBe(false);
    expect(referencedLocally(undefined, 's2', undefined)).toBe(false);
    for (const kind of [TaskKind.REPLICATE, TaskKind.REMOVE, TaskKind.REPAIR]) {
      expect(referencedLocally(undefined, 's2', { kind })).toBe(true);
    }
    expect(referencedLocally(undefined, 's2', { kind: TaskKind.COLLECT })).toBe(false);
  });

  it('takes only needles written at least the grace period ago', () => {
    expect(pastGrace(1_000, 2_000, 1_000)).toBe(true);
    expect(pastGrace(1_001, 2_000, 1_000)).toBe(false);
    fc.assert(
      fc.property(fc.nat(1e12), fc.nat(1e12), fc.nat(1e9), (written, now, grace) => {
        expect(pastGrace(written, now, grace)).toBe(now - written >= grace);
      }),
    );
  });

  it('remembers a copy for the grace period, per (blob, store) pair', () => {
    const r = new RecentCopies(500);
    r.note('b', 's1', 1_000);
    expect(r.recent('b', 's1', 1_499)).toBe(true);
    expect(r.recent('b', 's1', 1_500)).toBe(false);
    expect(r.recent('b', 's2', 1_100)).toBe(false);
    expect(r.recent('bs', '1', 1_100)).toBe(false);
  });

  it('stays bounded: past its size it drops the expired pairs first and keeps the live ones', () => {
    const r = new RecentCopies(500, 10);
    for (let i = 0; i < 10; i++) r.note(`old${i}`, 's', 0);
    r.note('fresh', 's', 400);
    expect(r.size).toBe(11);
    r.note('new', 's', 800);
    expect(r.size).toBe(2);
    expect(r.recent('fresh', 's', 800)).toBe(true);
    expect(r.recent('new', 's', 800)).toBe(true);
  });
});
