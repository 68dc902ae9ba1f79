import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import {
  GetBlobStatusRequestSchema,
  type GetBlobStatusResponse,
  TaskKind,
} from '../../../gen/haystack/v1/replication_pb.js';
import type { ReplicationManager } from '../../../internal/replication/manager.js';
import { replicationMetrics } from '../../../internal/replication/metrics.js';
import { replicationService } from '../../../internal/replication/service.js';
import { until } from './fakes.js';
import { ALL_ACTIVE, idInGroup, S4_JOINING, startedPlacement } from './placement-fakes.js';

const managers: ReplicationManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.stop();
});

describe('placement mode: corruption, status and metrics', () => {
  it('rewrites a member’s corrupt copy from another ACTIVE member with keep_stamp; ignores stores that do not hold the blob', async () => {
    const { fs, m } = await startedPlacement(managers, [ALL_ACTIVE]);
    fs.write(['s1', 's2', 's3'], 'rotten');
    expect(m.reportCorruption('s5', ['rotten'])).toBe(0);
    expect(m.reportCorruption('s2', ['rotten'])).toBe(1);
    await until(() => fs.replicateCalls.some((c) => c.to === 's2'), 5_000, 'a copy onto s2');
    const call = fs.replicateCalls.find((c) => c.to === 's2');
    expect(call?.keepStamp).toBe(true);
    expect(['s1', 's3']).toContain(call?.from);
    await until(() => m.queue.forBlob('rotten').length === 0, 5_000, 'repair done');
    expect(m.queue.list(undefined, 10).some((t) => t.kind === TaskKind.REPAIR)).toBe(false);
  });

  it('a member that refuses the repair copy (DATA_LOSS of its own damaged needle) is not reported as a corrupt source', async () => {
    const { fs, m } = await startedPlacement(managers, [ALL_ACTIVE]);
    fs.write(['s1', 's2', 's3'], 'rotten');
    const own = 'needle rotten: header checksum mismatch at volume 1 offset 8';
    fs.refuseReplicate = (store) => (store === 's2' ? new ConnectError(own, Code.DataLoss) : undefined);
    expect(m.reportCorruption('s2', ['rotten'])).toBe(1);
    const repair = () => m.queue.forBlob('rotten').find((t) => t.kind === TaskKind.REPAIR);
    await until(() => (repair()?.lastError ?? '') !== '', 5_000, 'a failed repair attempt');
    const msg = repair()?.lastError ?? '';
    expect(msg).toMatch(/^Replicate of rotten from s[13] onto s2: DATA_LOSS, s2 refused the copy/);
    expect(msg).toContain(own);
    expect(msg).not.toMatch(/is corrupt/);
  });

  it('GetBlobStatus lists the group’s members and extras with facts from Stat; NOT_FOUND when no member holds the blob', async () => {
    const { cfg, fs, m } = await startedPlacement(managers, [ALL_ACTIVE]);
    fs.write(['s1', 's2', 's3'], 'photo');
    fs.write(['s4'], 'photo'); // s4 holds a copy but is not listed: not reported
    const svc = replicationService(m, cfg);
    const st = (await svc.getBlobStatus(
      create(GetBlobStatusRequestSchema, { blobId: 'photo' }),
      {} as never,
    )) as GetBlobStatusResponse;
    expect(st.replicas.map((r) => [r.storeId, r.volumeId])).toEqual([
      ['s1', 1],
      ['s2', 1],
      ['s3', 1],
    ]);
    expect(st.targetReplicaCount).toBe(3);
    const err = await Promise.resolve(
      svc.getBlobStatus(create(GetBlobStatusRequestSchema, { blobId: 'nothing' }), {} as never),
    ).catch((e: unknown) => ConnectError.from(e));
    expect(err instanceof ConnectError && err.code).toBe(Code.NotFound);
  });

  it('exports placement gauges: groups, joining members, digest mismatches, backfill progress', async () => {
    // s4 does not answer, so its backfill cannot finish and it stays JOINING.
    const { dir, fs, m } = await startedPlacement(
      managers,
      [ALL_ACTIVE, S4_JOINING],
      { MONITORING_INTERVAL: '1h' },
      (f) => f.down.add('s4'),
    );
    fs.write(['s1'], idInGroup(0, 2, 0));
    await m.antiEntropy.round(0);
    const reg = new Registry();
    replicationMetrics(reg, () => m);
    const text = await reg.metrics();
    const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
    expect(value('haystack_replication_placement_groups')).toBe(2);
    expect(value('haystack_replication_joining_members')).toBe(1);
    expect(value('haystack_replication_digest_mismatches')).toBe(1);
    expect(value('haystack_replication_extra_replicas')).toBe(0);
    expect(text).toContain('# TYPE haystack_replication_backfill_needles gauge');
    expect(dir.state.placement.groupCount).toBe(2);
  });
});
