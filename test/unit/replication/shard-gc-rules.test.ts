import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  decideShardGc,
  isOrphanShard,
  type ShardFacts,
} from '../../../internal/replication/shard-gc-rules.js';

const facts = (o: Partial<ShardFacts> = {}): ShardFacts => ({
  writtenAtMs: 0,
  listed: true,
  listedActive: true,
  referenced: true,
  ...o,
});

describe('orphan shard rules', () => {
  it('a listed shard whose stripe a stub names is committed; unnamed, it is an orphan', () => {
    expect(isOrphanShard(facts())).toBe(false);
    expect(isOrphanShard(facts({ referenced: false }))).toBe(true);
  });

  it('an unlisted shard is an orphan once its index is whole elsewhere, or nothing names its stripe', () => {
    expect(isOrphanShard(facts({ listed: false }))).toBe(true);
    // Its index is being rebuilt on the listed store: keep the old copy meanwhile.
    expect(isOrphanShard(facts({ listed: false, listedActive: false }))).toBe(false);
    expect(isOrphanShard(facts({ listed: false, listedActive: false, referenced: false }))).toBe(true);
  });

  it('never calls a shard an orphan when a member could not tell', () => {
    fc.assert(
      fc.property(fc.boolean(), fc.boolean(), (listed, listedActive) => {
        expect(isOrphanShard(facts({ listed, listedActive, referenced: undefined }))).toBe(false);
      }),
    );
  });

  it('collects an orphan only when written and seen orphaned at least the grace period ago', () => {
    const orphan = facts({ referenced: false, writtenAtMs: 1_000 });
    // First sighting starts the clock, however old the shard.
    expect(decideShardGc(orphan, undefined, 100_000, 0)).toEqual({ action: 'wait', orphanSinceMs: 100_000 });
    expect(decideShardGc(orphan, 5_000, 5_999, 1_000)).toEqual({ action: 'wait', orphanSinceMs: 5_000 });
    expect(decideShardGc(orphan, 5_000, 6_000, 1_000)).toEqual({ action: 'collect' });
    // Written recently (an encode in flight): not yet, however long it has looked orphaned.
    expect(decideShardGc({ ...orphan, writtenAtMs: 9_500 }, 0, 10_000, 1_000)).toEqual({
      action: 'wait',
      orphanSinceMs: 0,
    });
    expect(decideShardGc(facts(), 0, 1e9, 0)).toEqual({ action: 'keep' });
  });

  it('a committed shard is never collected, whatever the clocks say', () => {
    fc.assert(
      fc.property(
        fc.nat(1e12),
        fc.option(fc.nat(1e12), { nil: undefined }),
        fc.nat(1e12),
        fc.nat(1e9),
        (written, since, now, grace) => {
          const d = decideShardGc(facts({ writtenAtMs: written }), since, now, grace);
          expect(d.action).toBe('keep');
        },
      ),
    );
  });

  it('collects exactly when both clocks are past the grace period (property)', () => {
    fc.assert(
      fc.property(fc.nat(1e12), fc.nat(1e12), fc.nat(1e12), fc.nat(1e9), (written, since, now, grace) => {
        const d = decideShardGc(facts({ referenced: false, writtenAtMs: written }), since, now, grace);
        expect(d.action === 'collect').toBe(now - written >= grace && now - since >= grace);
      }),
    );
  });
});
