/**
 * When the leader creates a new cluster's placement groups (pure). The first
 * placement is final until an operator moves groups (`haystack placement
 * balance`), so a store that registers after it holds nothing: creating the
 * groups as soon as `replicas` stores were up left the 4th store of a 4-store
 * cluster idle whenever it registered a second late (docs/faults.md).
 *
 * The rule: at least `replicas` stores eligible (HEALTHY, writable), the set of
 * eligible stores unchanged for `settleMs` (stores started together all get
 * memberships), and either `expected` of them (PLACEMENT_EXPECTED_STORES) or,
 * when some never come, `expectedWaitMs` (PLACEMENT_EXPECTED_WAIT) gone since
 * `replicas` were first eligible: a cluster with a dead store still becomes
 * writable, on the stores it has.
 */
export interface FirstPlacementInput {
  /** Stores eligible now (HEALTHY, writable). */
  eligible: number;
  /** Members per group (DEFAULT_REPLICA_COUNT). */
  replicas: number;
  /** PLACEMENT_EXPECTED_STORES; at most `replicas` means "as soon as `replicas` are up". */
  expected: number;
  /** ms the set of eligible stores has been unchanged. */
  unchangedMs: number;
  /** ms the set must be unchanged before placing. */
  settleMs: number;
  /** ms since at least `replicas` stores were first (continuously) eligible; undefined: not yet. */
  enoughForMs: number | undefined;
  /** PLACEMENT_EXPECTED_WAIT (ms). */
  expectedWaitMs: number;
}

export type FirstPlacementDecision =
  | { place: true; short: number }
  | { place: false; waitingFor: 'replicas' | 'settle' | 'expected' };

/** Whether to create the placement groups now; `short` counts expected stores missing (0: all there). */
export function decideFirstPlacement(i: FirstPlacementInput): FirstPlacementDecision {
  if (i.eligible < i.replicas || i.enoughForMs === undefined) return { place: false, waitingFor: 'replicas' };
  if (i.unchangedMs < i.settleMs) return { place: false, waitingFor: 'settle' };
  const short = Math.max(0, i.expected - i.eligible);
  if (short > 0 && i.enoughForMs < i.expectedWaitMs) return { place: false, waitingFor: 'expected' };
  return { place: true, short };
}
