import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { describe, expect, it } from 'vitest';
import { ColdRefSchema, StoreHealth } from '../../../gen/haystack/v1/common_pb.js';
import { type PlacementGroup, PlacementMemberState } from '../../../gen/haystack/v1/metadata_pb.js';
import { STUB_CONTENT_TYPE } from '../../../internal/common/shard-key.js';
import { encodeBlob } from '../../../internal/ec/codec.js';
import { layoutToWire } from '../../../internal/ec/layout-wire.js';
import type { StoreClient } from '../../../internal/ec/shard-client.js';
import { ColdTier } from '../../../internal/replication/cold-tier.js';
import type { PlacementEnv } from '../../../internal/replication/placement-env.js';
import type { StoreAt } from '../../../internal/rpc/clients.js';
import { createLogger } from '../../../internal/server/logger.js';
import { testConfig } from './fakes.js';

/**
 * The cold tier's shard scrub against a store that hangs (SIGSTOPped, or a disk that
 * stopped answering) while its heartbeats still say HEALTHY: one scrub read waits at
 * most SCRUB_READ_TIMEOUT (not COPY_TIMEOUT, which holds the lane and every encode
 * and warm behind it), the store is then left alone by the scrub for a while, and
 * nothing is rebuilt onto it (a hang is unknown, not corrupt).
 */
const K = 3;
const M = 2;
const STORES = ['s0', 's1', 's2', 's3', 's4'];
const HUNG = 's3';

async function setup() {
  const data = Buffer.from('a blob nobody reads, erasure-coded across five stores');
  const enc = await encodeBlob(data, { k: K, m: M });
  const cold = create(ColdRefSchema, { stripeId: 'b1', offset: 0n, layout: layoutToWire(enc.layout) });
  const reads = new Map<string, number>();
  const writes: string[] = [];
  let now = 1_000_000;
  const client = ({ storeId }: StoreAt) =>
    ({
      async listPlacementGroup() {
        return {
          needles: [{ blobId: 'b1', deleted: false, contentType: STUB_CONTENT_TYPE }],
          nextPageToken: '',
        };
      },
      async stat() {
        return { needle: { blobId: 'b1', cold } };
      },
      async *readShard(req: { index: number }, opts: { signal?: AbortSignal }) {
        reads.set(storeId, (reads.get(storeId) ?? 0) + 1);
        if (storeId === HUNG) {
          // Never answers: only the caller's deadline ends the call.
          await new Promise<void>((_, reject) =>
            opts.signal?.addEventListener('abort', () =>
              reject(new ConnectError('the operation timed out', Code.DeadlineExceeded)),
            ),
          );
        }
        const shard = enc.shards[req.index]!;
        yield { msg: { case: 'header' as const, value: { size: BigInt(shard.length) } } };
        yield { msg: { case: 'chunk' as const, value: shard } };
      },
      writeShard() {
        writes.push(storeId);
        throw new Error('the scrub must rebuild nothing here');
      },
    }) as unknown as StoreClient;
  const group = {
    group: 0,
    epoch: 1n,
    members: STORES.slice(0, 3).map((storeId) => ({ storeId, state: PlacementMemberState.ACTIVE })),
    ecMembers: STORES.map((storeId) => ({ storeId, state: PlacementMemberState.ACTIVE })),
    ecDataShards: K,
  } as unknown as PlacementGroup;
  const env = {
    // A copy's deadline far beyond the test's: only the scrub's own deadline can end the hung read.
    cfg: testConfig({
      EC_ENABLED: 'true',
      EC_DATA_SHARDS: String(K),
      EC_PARITY_SHARDS: String(M),
      COPY_TIMEOUT: '600s',
      SCRUB_READ_TIMEOUT: '200ms',
    }),
    log: createLogger('replication', 'test', 'silent'),
    mirror: {
      stores: new Map(STORES.map((id) => [id, { storeId: id, address: id, health: StoreHealth.HEALTHY }])),
      placement: { enabled: true, groupCount: 1, groups: [group] },
    },
    acting: () => true,
    ensureActing: () => {},
    term: () => 1n,
    signal: () => new AbortController().signal,
    now: () => now,
  } as unknown as PlacementEnv;
  const tier = new ColdTier(env, client);
  return { tier, reads, writes, advance: (ms: number) => (now += ms) };
}

describe('cold tier scrub with a hung shard store', () => {
  it('waits SCRUB_READ_TIMEOUT, not COPY_TIMEOUT, on a store that never answers, and rebuilds nothing onto it', {
    timeout: 10_000,
  }, async () => {
    const { tier, reads, writes } = await setup();
    expect(await tier.repair(true)).toBe(0);
    expect(reads.get(HUNG)).toBe(1);
    for (const s of STORES) expect(reads.get(s)).toBe(1);
    expect(writes).toEqual([]);
  });

  it('skips the store for the next passes, then reads it again after a minute', {
    timeout: 10_000,
  }, async () => {
    const { tier, reads, advance } = await setup();
    await tier.repair(true);
    await tier.repair(true);
    expect(reads.get(HUNG)).toBe(1);
    expect(reads.get('s0')).toBe(2);
    advance(61_000);
    await tier.repair(true);
    expect(reads.get(HUNG)).toBe(2);
  });
});
