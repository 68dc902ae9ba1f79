import { Code, ConnectError } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { type PlacementGroup, PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import type { ColdTier } from './cold-tier.js';
import { decideShardGc, type ShardFacts, shardPairKey } from './shard-gc-rules.js';

const LIST_PAGE = 1000;
/** Orphan clocks remembered at most (a pass keeps only the orphans it saw). */
const MAX_TRACKED = 100_000;

/**
 * Orphan shard collection (rules: shard-gc-rules.ts), run by the active manager
 * every GC_INTERVAL in the cold tier's lane (so no encode, warm, repair or drain
 * of this instance runs meanwhile): each HEALTHY store's shards (ListShards),
 * each judged against the group's ec_members and its members' stubs — one
 * listing of the group's stubs per pass, then a Stat on every member for a
 * stripe that listing does not name — and deleted (DeleteShard with the lease
 * term) once it has been an orphan for GC_GRACE_PERIOD. A store or member that
 * fails is skipped for this pass (logged at debug): nothing is collected on doubt.
 */
export class ShardGc {
  /** (store, stripe, index) → when first seen orphaned (env.now()). */
  private orphanSince = new Map<string, number>();

  constructor(private readonly tier: ColdTier) {}

  /** One pass; returns the shards deleted. */
  async pass(): Promise<number> {
    const env = this.tier.env;
    const seen = new Map<string, number>();
    const stubs = new Map<number, Set<string> | undefined>();
    const referenced = new Map<string, boolean | undefined>();
    let collected = 0;
    for (const s of [...env.mirror.stores.values()]) {
      if (!env.acting() || s.health !== StoreHealth.HEALTHY) continue;
      try {
        collected += await this.passStore(s.storeId, seen, stubs, referenced);
      } catch (err) {
        env.log.debug({ store: s.storeId, err: ConnectError.from(err).message }, 'shard gc of store failed');
      }
    }
    // Only orphans seen this pass keep their clocks (a shard gone or referenced again forgets it).
    this.orphanSince = seen;
    if (collected > 0) env.log.info({ collected }, 'orphan shards collected');
    return collected;
  }

  private async passStore(
    storeId: string,
    seen: Map<string, number>,
    stubs: Map<number, Set<string> | undefined>,
    referenced: Map<string, boolean | undefined>,
  ): Promise<number> {
    const env = this.tier.env;
    const p = env.mirror.placement;
    const client = this.tier.client(storeId);
    let token = '';
    let collected = 0;
    do {
      const page = await client.listShards(
        { pageSize: LIST_PAGE, pageToken: token },
        { signal: this.tier.deadline() },
      );
      for (const sh of page.shards) {
        if (!env.acting()) return collected;
        const g = p.groupFor(sh.stripeId);
        if (!g) continue;
        const at = g.ecMembers[sh.index];
        const facts: ShardFacts = {
          writtenAtMs: Number(sh.writtenAtMs),
          listed: at?.storeId === storeId,
          // A listed store being drained may be mid-move (shard-drain.ts): its target's copies wait.
          listedActive:
            at?.state === PlacementMemberState.ACTIVE && !env.mirror.stores.get(at.storeId)?.draining,
          referenced: await this.referenced(g, sh.stripeId, stubs, referenced),
        };
        const key = shardPairKey(storeId, sh.stripeId, sh.index);
        const now = env.now();
        const d = decideShardGc(facts, this.orphanSince.get(key), now, env.cfg.gcGracePeriodMs);
        if (d.action === 'wait') {
          if (seen.size < MAX_TRACKED) seen.set(key, d.orphanSinceMs);
        } else if (d.action === 'collect') {
          env.ensureActing();
          await client.deleteShard(
            { stripeId: sh.stripeId, index: sh.index, term: env.term() },
            { signal: this.tier.deadline() },
          );
          collected++;
          this.tier.events.onShardCollected?.(storeId, sh.stripeId, sh.index);
          env.log.info(
            { store: storeId, stripe: sh.stripeId, index: sh.index, listed: facts.listed },
            'orphan shard collected',
          );
        }
      }
      token = page.nextPageToken;
    } while (token && env.acting());
    return collected;
  }

  /**
   * Whether a member's stub names `stripeId`: the group's stub listing (one
   * member, once per pass) first; for a stripe it does not name, a Stat on every
   * member (a cooling that crashed mid-stubs leaves some members with the stub).
   * Undefined when the group has no readable member or a member fails to answer.
   */
  private async referenced(
    g: PlacementGroup,
    stripeId: string,
    stubs: Map<number, Set<string> | undefined>,
    cache: Map<string, boolean | undefined>,
  ): Promise<boolean | undefined> {
    if (cache.has(stripeId)) return cache.get(stripeId);
    if (!stubs.has(g.group)) {
      const listed = await this.tier.stubsOf(g).catch(() => undefined);
      stubs.set(g.group, listed ? new Set(listed.ids) : undefined);
    }
    let r: boolean | undefined;
    if (!stubs.get(g.group)) r = undefined;
    else if (stubs.get(g.group)?.has(stripeId)) r = true;
    else r = await this.statMembers(g, stripeId);
    cache.set(stripeId, r);
    return r;
  }

  private async statMembers(g: PlacementGroup, stripeId: string): Promise<boolean | undefined> {
    for (const m of g.members) {
      if (!this.tier.healthy(m.storeId)) return undefined;
      try {
        const res = await this.tier
          .client(m.storeId)
          .stat({ blobId: stripeId }, { signal: this.tier.deadline() });
        if (res.needle?.cold?.stripeId === stripeId) return true;
      } catch (err) {
        if (ConnectError.from(err).code !== Code.NotFound) return undefined;
      }
    }
    return false;
  }
}
