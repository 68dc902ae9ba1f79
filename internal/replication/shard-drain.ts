import { Code, ConnectError } from '@connectrpc/connect';
import { type PlacementGroup, PlacementMemberState } from '../../gen/haystack/v1/metadata_pb.js';
import { verifyShard } from '../ec/codec.js';
import { getShard, putShard } from '../ec/shard-client.js';
import type { ColdTier } from './cold-tier.js';
import { chooseTargets } from './placement.js';

/**
 * Moves a group's shards off a draining store (`haystack drain`, issue 15;
 * docs/operations.md), one EC member at a time, in the order that keeps every
 * stripe at k + m durable, listed shards:
 *
 * 1. a target: HEALTHY, not draining, with room, none of the group's EC stores
 *    (shards of a stripe need distinct stores), zones spread (chooseTargets);
 * 2. every stripe of the group (its stubs on an ACTIVE member): shard i copied
 *    from the draining store when it answers intact (CRC32C against the layout),
 *    else rebuilt from k others (ColdTier.rebuild); written durable on the target
 *    (`replace`: an earlier attempt's copy is kept when intact);
 * 3. the commit: UpdatePlacement with ec_members[i] = the target, ACTIVE, a
 *    compare-and-set on the group's current epoch, only if ec_members did not
 *    change meanwhile (cooling adds no stripe to a group with a draining EC
 *    member, and runs in the same lane);
 * 4. only then each moved shard is deleted from the draining store. A delete that
 *    fails leaves an orphan, which orphan shard collection removes later.
 *
 * A failure before 3 commits nothing (the copies on the target are orphans until
 * the next attempt reuses them, or collection). Returns the shards moved.
 */
export async function drainShards(tier: ColdTier, g: PlacementGroup): Promise<number> {
  const env = tier.env;
  const draining = (id: string) => env.mirror.stores.get(id)?.draining ?? false;
  const i = g.ecMembers.findIndex((m) => draining(m.storeId));
  const from = g.ecMembers[i]?.storeId;
  if (from === undefined) return 0;
  const others = g.ecMembers.filter((_, j) => j !== i).map((m) => m.storeId);
  const [to] = chooseTargets(others, 0n, 1, env.ctx(env.now()), new Set([from]));
  if (!to) {
    const key = `${g.group}/${from}`;
    if (!tier.drainStalled.has(key))
      env.log.warn(
        { group: g.group, from },
        'cold tier: no store to take a draining store’s shards; waiting',
      );
    tier.drainStalled.add(key);
    return 0;
  }
  tier.drainStalled.delete(`${g.group}/${from}`);
  const stubs = await tier.stubsOf(g);
  if (!stubs) return 0;
  const moved: string[] = [];
  for (const blobId of stubs.ids) {
    if (!env.acting()) return 0;
    const layout = await tier.stripeLayout(stubs.reader, blobId);
    if (!layout) continue;
    if (layout.k + layout.m !== g.ecMembers.length)
      throw new Error(
        `RS(${layout.k},${layout.m}) of ${blobId} does not fit ${g.ecMembers.length} EC members`,
      );
    let bytes: Uint8Array | undefined;
    if (tier.healthy(from)) {
      try {
        const b = await getShard(tier.client(from), blobId, i, { signal: tier.deadline() });
        if (verifyShard(layout, i, b)) bytes = b;
      } catch (err) {
        const code = ConnectError.from(err).code;
        if (code !== Code.NotFound && code !== Code.DataLoss) throw err;
      }
    }
    bytes ??= (await tier.rebuild(blobId, layout, g, new Set([i]))).shards[i];
    if (!bytes) throw new Error(`shard ${i} of ${blobId} could not be rebuilt`);
    env.ensureActing();
    await putShard(tier.client(to.storeId), blobId, i, bytes, layout.crc32c[i] as number, {
      term: env.term(),
      replace: true,
      signal: tier.deadline(),
    });
    moved.push(blobId);
  }
  // The commit, against the group as it is now: members may have moved meanwhile (a drain of its memberships).
  const cur = env.mirror.placement.groups[g.group];
  const same =
    cur !== undefined &&
    cur.ecMembers.length === g.ecMembers.length &&
    cur.ecMembers.every((m, j) => m.storeId === g.ecMembers[j]?.storeId);
  if (!same) return 0;
  env.ensureActing();
  await env.directory.updatePlacement({
    group: cur.group,
    expectedEpoch: cur.epoch,
    members: cur.members,
    ecMembers: cur.ecMembers.map((m, j) =>
      j === i
        ? { storeId: to.storeId, state: PlacementMemberState.ACTIVE }
        : { storeId: m.storeId, state: m.state },
    ),
    ecDataShards: cur.ecDataShards,
  });
  env.log.info(
    { group: g.group, index: i, from, to: to.storeId, stripes: moved.length },
    'cold tier: EC member moved off a draining store',
  );
  for (const blobId of moved) {
    tier.events.onShardRepair?.(to.storeId, blobId, 'drained');
    if (!tier.healthy(from)) continue;
    try {
      await tier
        .client(from)
        .deleteShard({ stripeId: blobId, index: i, term: env.term() }, { signal: tier.deadline() });
    } catch (err) {
      env.log.warn(
        { blobId, store: from, err: ConnectError.from(err).message },
        'cold tier: a drained shard was not deleted; orphan collection will',
      );
    }
  }
  return moved.length;
}
