import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpsGet, securityOf, TEST_ADMIN } from '../helpers/pki.js';
import { storeClient, writeBlob } from '../helpers/store-client.js';
import { type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

/** The value of one sample line (`name{labels} value`) of a Prometheus text page, or undefined. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

describe('store metrics (a real store process)', () => {
  let proc: ServerProcess;

  beforeAll(async () => {
    proc = await spawnServer({
      name: 'store',
      args: ['store', '--listen', '127.0.0.1:0', '--data', tmpName('store-metrics')],
      env: { STORE_ID: 'store-m1' },
    });
  });

  afterAll(async () => {
    await proc?.kill();
  });

  const scrape = async () => {
    const res = await httpsGet(`https://${proc.address}/metrics`);
    expect(res.status).toBe(200);
    return res.body;
  };

  it('exports volumes, needles, bytes, free space, fsync latency, compaction and scrub results', async () => {
    // Writes and deletes as a gateway (with a directory term), compaction and scrub as an operator.
    const client = storeClient(proc.address);
    const admin = storeClient(proc.address, { security: await securityOf(TEST_ADMIN) });
    const data = new Uint8Array(100_000).map((_, i) => i & 0xff);
    for (let i = 0; i < 5; i++) await writeBlob(client, `metrics-${i}`, data);
    await client.delete({ blobId: 'metrics-0', term: 1n });
    await client.delete({ blobId: 'metrics-1', term: 1n });
    const stats = await client.getStats({});
    const vid = String(stats.volumes[0]!.volumeId);

    let text = await scrape();
    expect(sample(text, 'haystack_store_volumes', { state: 'writable' })).toBe(1);
    expect(sample(text, 'haystack_store_volume_needles', { volume: vid, state: 'live' })).toBe(3);
    expect(
      sample(text, 'haystack_store_volume_needles', { volume: vid, state: 'deleted' }),
    ).toBeGreaterThanOrEqual(2);
    expect(sample(text, 'haystack_store_volume_live_bytes', { volume: vid })).toBeGreaterThanOrEqual(300_000);
    expect(sample(text, 'haystack_store_volume_size_bytes', { volume: vid })).toBeGreaterThanOrEqual(500_000);
    expect(sample(text, 'haystack_store_needles')).toBe(3);
    // The disk is shared with other processes: free space moves between two reads.
    const capacity = sample(text, 'haystack_store_capacity_bytes') ?? 0;
    expect(capacity).toBe(Number(stats.capacityBytes));
    expect(sample(text, 'haystack_store_free_bytes')).toBeGreaterThan(0);
    expect(sample(text, 'haystack_store_free_bytes')).toBeLessThanOrEqual(capacity);
    expect(sample(text, 'haystack_store_writable')).toBe(1);
    // 5 writes + 2 tombstones, each acknowledged only after a group commit.
    const commits = sample(text, 'haystack_store_group_commits_total', { outcome: 'ok' }) ?? 0;
    expect(commits).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'haystack_store_fsync_duration_seconds_count')).toBe(commits);
    expect(sample(text, 'haystack_store_group_commit_needles_total')).toBe(7);
    expect(sample(text, 'haystack_store_compactions_total', { outcome: 'ok' })).toBe(0);

    const compacted = await admin.compact({ volumeId: Number(vid), force: true });
    expect(compacted.compactions.length).toBe(1);
    const scrubbed = await admin.scrub({ volumeId: 0 });
    expect(scrubbed.corrupt.length).toBe(0);

    text = await scrape();
    expect(sample(text, 'haystack_store_compactions_total', { outcome: 'ok' })).toBe(1);
    expect(sample(text, 'haystack_store_compaction_duration_seconds_count')).toBe(1);
    expect(sample(text, 'haystack_store_compaction_reclaimed_bytes_total')).toBeGreaterThanOrEqual(200_000);
    expect(sample(text, 'haystack_store_volume_needles', { volume: vid, state: 'deleted' })).toBe(2);
    expect(sample(text, 'haystack_store_scrubs_total')).toBe(1);
    expect(sample(text, 'haystack_store_scrub_checked_needles_total')).toBeGreaterThanOrEqual(3);
    expect(sample(text, 'haystack_store_scrub_corrupt_needles_total', { kind: 'current' })).toBe(0);
    expect(sample(text, 'haystack_store_last_scrub_timestamp_seconds', { volume: vid })).toBeGreaterThan(
      Date.now() / 1000 - 3600,
    );
  });

  it('names its role and id in an info metric and sets no instance label (Prometheus owns it)', async () => {
    const text = await scrape();
    expect(sample(text, 'haystack_process_info', { role: 'store', id: 'store-m1' })).toBe(1);
    expect(text).not.toMatch(/[{,]instance="/);
  });
});
