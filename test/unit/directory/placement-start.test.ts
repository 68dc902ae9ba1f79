import { describe, expect, it } from 'vitest';
import {
  decideFirstPlacement,
  type FirstPlacementInput,
} from '../../../internal/directory/placement-start.js';

/** A 4-store cluster of 3 replicas whose eligible set has settled: the base every case varies. */
const base: FirstPlacementInput = {
  eligible: 4,
  replicas: 3,
  expected: 4,
  unchangedMs: 5_000,
  settleMs: 1_000,
  enoughForMs: 5_000,
  expectedWaitMs: 60_000,
};
const decide = (o: Partial<FirstPlacementInput>) => decideFirstPlacement({ ...base, ...o });

describe('decideFirstPlacement: when a new cluster creates its placement groups', () => {
  it('places once every expected store is up and the set has settled', () => {
    expect(decide({})).toEqual({ place: true, short: 0 });
  });

  it('waits for the replica count of stores', () => {
    expect(decide({ eligible: 2, enoughForMs: undefined })).toEqual({ place: false, waitingFor: 'replicas' });
    // Even with PLACEMENT_EXPECTED_WAIT long gone: fewer stores than replicas cannot hold a group.
    expect(decide({ eligible: 2, expectedWaitMs: 0, enoughForMs: undefined }).place).toBe(false);
  });

  it('waits while the set of eligible stores is still changing', () => {
    expect(decide({ unchangedMs: 999 })).toEqual({ place: false, waitingFor: 'settle' });
  });

  it('waits for a late expected store instead of leaving it without memberships', () => {
    // The case of docs/faults.md: 3 of 4 stores registered, settled, the 4th a second late.
    expect(decide({ eligible: 3, enoughForMs: 2_000 })).toEqual({ place: false, waitingFor: 'expected' });
  });

  it('places on the stores there once PLACEMENT_EXPECTED_WAIT has gone, naming how many are missing', () => {
    expect(decide({ eligible: 3, enoughForMs: 60_000 })).toEqual({ place: true, short: 1 });
  });

  it('without PLACEMENT_EXPECTED_STORES places as soon as the replica count has settled', () => {
    expect(decide({ eligible: 3, expected: 0, enoughForMs: 1_000 })).toEqual({ place: true, short: 0 });
    // More stores than expected: all of them get memberships (initialPlacement uses every eligible one).
    expect(decide({ eligible: 6, expected: 4 })).toEqual({ place: true, short: 0 });
  });
});
