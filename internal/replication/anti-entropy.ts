import type { PlacementGroup } from '../../gen/haystack/v1/metadata_pb.js';
import { PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { fetchDigests, syncGroup } from './group-sync.js';
import { isLive } from './placement.js';
import type { PlacementEnv } from './placement-env.js';
import { membersIn, mismatchedGroups } from './placement-planner.js';

/** What one anti-entropy round found and did. */
export interface AntiEntropyRound {
  at: number;
  /** Groups whose members' digests were compared. */
  groupsCompared: number;
  /** Groups whose members disagreed. */
  mismatched: number[];
  /** Groups synced this round (at most the round's limit). */
  synced: number;
  /** Needles copied (live ones and tombstones). */
  copies: number;
  durationMs: number;
}

/**
 * Anti-entropy: the members of a placement group converge on the newest needle
 * per id. Each round asks every ACTIVE member for its per-group digests
 * (GetPlacementDigests: one call per store covers all its groups), and syncs the
 * groups whose members disagree (group-sync.ts: list each member, copy the newest
 * needle of every id where it is missing or older; the stamp wins, tombstones
 * included). This repairs a write or a delete that reached only some members
 * before its gateway died, and a member that missed writes while it was away.
 *
 * - Runs nightly and on RunAudit (every differing group), and every
 *   ANTI_ENTROPY_INTERVAL at a low rate (ANTI_ENTROPY_GROUPS groups per round,
 *   taking turns so a group that keeps failing does not starve the others).
 * - Needles younger than ANTI_ENTROPY_SETTLE are left to the next round: a write
 *   in flight is reaching the other members by its gateway anyway.
 * - Groups with a JOINING member are the backfill's (backfill.ts); DOWN members are
 *   left out (they are compared again when they are back).
 */
export class AntiEntropy {
  last: AntiEntropyRound | undefined;
  copiesTotal = 0;
  private cursor = 0;
  private running: Promise<AntiEntropyRound> | undefined;

  constructor(private readonly env: PlacementEnv) {}

  /** Groups whose members disagreed in the last round. */
  get mismatchedNow(): number {
    return this.last?.mismatched.length ?? 0;
  }

  /** One round, syncing at most `limit` differing groups; rounds run one after another. */
  round(limit: number): Promise<AntiEntropyRound> {
    const prev = this.running;
    const next: Promise<AntiEntropyRound> = (async () => {
      if (prev) await prev.catch(() => {});
      return this.run(limit);
    })().finally(() => {
      if (this.running === next) this.running = undefined;
    });
    this.running = next;
    return next;
  }

  /** The members compared in a group: ACTIVE and not DOWN. */
  private compared(g: PlacementGroup): string[] {
    return membersIn(g, PlacementMemberState.ACTIVE).filter((s) => isLive(this.env.mirror.stores.get(s)));
  }

  private async run(limit: number): Promise<AntiEntropyRound> {
    const env = this.env;
    const started = env.now();
    const groups = env.mirror.placement.groups.filter(
      (g) => g && membersIn(g, PlacementMemberState.JOINING).length === 0,
    );
    const digests = await fetchDigests(env, new Set(groups.flatMap((g) => this.compared(g))));
    const mismatched = mismatchedGroups(groups, digests, (g) => this.compared(g));
    const round: AntiEntropyRound = {
      at: started,
      groupsCompared: groups.length,
      mismatched,
      synced: 0,
      copies: 0,
      durationMs: 0,
    };
    // Take turns: start after the group the previous round stopped at.
    const order = [
      ...mismatched.filter((g) => g >= this.cursor),
      ...mismatched.filter((g) => g < this.cursor),
    ];
    for (const group of order.slice(0, limit)) {
      if (!env.acting()) break;
      const g = env.mirror.placement.groups[group];
      if (!g) continue;
      const members = this.compared(g);
      try {
        const r = await syncGroup(env, g, {
          members,
          sources: new Set(members),
          settledBefore: BigInt(env.now() - env.cfg.antiEntropySettleMs),
        });
        round.synced++;
        round.copies += r.copies;
        if (r.corruptSources.size > 0) {
          env.log.warn(
            { group, stores: [...r.corruptSources] },
            'anti-entropy: a source copy failed verification',
          );
        }
      } catch (err) {
        env.log.warn(
          { group, err: err instanceof Error ? err.message : String(err) },
          'anti-entropy sync failed',
        );
      }
      this.cursor = group + 1;
    }
    round.durationMs = env.now() - started;
    this.copiesTotal += round.copies;
    this.last = round;
    if (mismatched.length > 0) {
      env.log.info(
        {
          compared: round.groupsCompared,
          mismatched: mismatched.length,
          synced: round.synced,
          copies: round.copies,
        },
        'anti-entropy round',
      );
    }
    return round;
  }
}
