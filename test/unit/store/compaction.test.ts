import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { CompactionStep } from '../../../internal/store/compaction.js';
import { NotFoundError } from '../../../internal/store/errors.js';
import type { Store } from '../../../internal/store/store.js';
import { blob, get, hex, openStore, put, tempDir } from './helpers.js';

const STEPS: CompactionStep[] = [
  'begin',
  'copied',
  'synced',
  'dat-renamed',
  'dir-synced',
  'idx-renamed',
  'done',
];

/** 40 blobs, every other one deleted → volume 1 is ~50% efficient. */
async function populate(s: Store): Promise<Map<string, Uint8Array>> {
  const live = new Map<string, Uint8Array>();
  for (let i = 0; i < 40; i++) {
    const data = blob(2000 + i * 13, i);
    await put(s, `b${i}`, data);
    live.set(`b${i}`, data);
  }
  for (let i = 0; i < 40; i += 2) {
    expect(await s.delete(`b${i}`)).toBe(true);
    live.delete(`b${i}`);
  }
  return live;
}

async function checkStore(s: Store, live: Map<string, Uint8Array>, deleted: string[]): Promise<void> {
  for (const [id, data] of live) expect(hex(await get(s, id)), id).toBe(hex(data));
  for (const id of deleted) {
    await expect(s.openRead(id), id).rejects.toBeInstanceOf(NotFoundError);
    expect((await s.stat(id, { includeDeleted: true })).deleted, id).toBe(true); // its tombstone is current
  }
  expect((await s.stats()).needleCount).toBe(live.size);
  expect((await s.scrub()).corrupt).toEqual([]);
}

const deletedIds = Array.from({ length: 20 }, (_, i) => `b${i * 2}`);

describe('compaction', () => {
  it('reclaims space, keeps live data and tombstones, across restart', async () => {
    const dir = await tempDir();
    let s = await openStore(dir, { maxVolumeSize: 4 << 20 });
    const live = await populate(s);
    const before = (await s.stats()).volumes[0]!;
    expect(before.efficiency).toBeLessThan(0.6);
    expect(await s.compact(1)).toHaveLength(1); // below threshold → compacted
    const after = (await s.stats()).volumes[0]!;
    expect(after.sizeBytes).toBeLessThan(before.sizeBytes * 0.65);
    expect(after.efficiency).toBeGreaterThan(0.95);
    expect(await s.compact()).toEqual([]); // nothing below threshold any more
    expect(await s.compact(1, true)).toHaveLength(1); // forced
    await checkStore(s, live, deletedIds);
    await s.close();
    s = await openStore(dir, { maxVolumeSize: 4 << 20 });
    await checkStore(s, live, deletedIds);
    expect((await fs.readdir(dir)).sort()).toEqual(['1.dat', '1.idx']);
  });

  it('keeps a delete whose tombstone sits in another volume than the data, through compaction of both', async () => {
    const dir = await tempDir();
    let s = await openStore(dir, { maxVolumeSize: 8192 });
    const data = blob(3000, 5);
    const w = await put(s, 'victim', data);
    await put(s, 'filler', blob(3500, 6)); // fills volume 1 → next needles go to volume 2
    await put(s, 'keeper', blob(3000, 7));
    expect(await s.delete('victim')).toBe(true);
    const vols = (await s.stats()).volumes;
    expect(vols.length).toBeGreaterThan(1);
    // compact the tombstone's volume(s) first, restart, then the data's volume
    for (const v of vols) if (v.volumeId !== w.volumeId) await s.compact(v.volumeId, true);
    await s.close();
    s = await openStore(dir, { maxVolumeSize: 8192 });
    await expect(s.openRead('victim')).rejects.toBeInstanceOf(NotFoundError);
    await s.compact(w.volumeId, true);
    await s.close();
    s = await openStore(dir, { maxVolumeSize: 8192 });
    await expect(s.openRead('victim')).rejects.toBeInstanceOf(NotFoundError);
    expect((await s.stat('victim', { includeDeleted: true })).deleted).toBe(true);
    expect(hex(await get(s, 'keeper'))).toBe(hex(blob(3000, 7)));
  });

  it('serves correct results to concurrent reads, writes and deletes while compacting', async () => {
    const dir = await tempDir();
    let s = await openStore(dir, { maxVolumeSize: 4 << 20 });
    const live = await populate(s);
    const deleted = [...deletedIds];
    let compactions = 0;
    let stop = false;
    const compactor = (async () => {
      while (!stop) {
        await s.compact(1, true);
        compactions++;
        await new Promise((r) => setTimeout(r, 1));
      }
    })();
    const readers = Array.from({ length: 4 }, async (_, k) => {
      for (let round = 0; round < 15; round++) {
        for (const [id, data] of [...live]) {
          if (!live.has(id)) continue;
          const got = await get(s, id).catch((e: unknown) => e);
          if (got instanceof NotFoundError && !live.has(id)) continue; // deleted meanwhile
          expect(hex(got as Uint8Array), `${id} r${k}`).toBe(hex(data));
        }
      }
    });
    const writer = (async () => {
      for (let i = 0; i < 40; i++) {
        const data = blob(1500, 100 + i);
        await put(s, `new${i}`, data);
        live.set(`new${i}`, data);
        if (i % 5 === 0) {
          const victim = `b${i + 1}`;
          if (live.has(victim)) {
            live.delete(victim);
            expect(await s.delete(victim)).toBe(true);
            deleted.push(victim);
          }
        }
      }
    })();
    await Promise.all([...readers, writer]);
    stop = true;
    await compactor;
    expect(compactions).toBeGreaterThan(1);
    await checkStore(s, live, deleted);
    await s.close();
    s = await openStore(dir, { maxVolumeSize: 4 << 20 });
    await checkStore(s, live, deleted);
  });

  for (const crashAt of STEPS) {
    it(`leaves a complete, consistent store after a crash at step "${crashAt}"`, async () => {
      const dir = await tempDir();
      const s = await openStore(dir, {
        maxVolumeSize: 4 << 20,
        hooks: {
          compactionStep: async (step) => {
            if (step === crashAt) {
              // kill -9 image: copy the directory exactly as it is now, then freeze forever
              await fs.cp(dir, `${dir}-crash`, { recursive: true });
              frozen();
              await new Promise(() => {});
            }
          },
        },
      });
      let frozen!: () => void;
      const atCrash = new Promise<void>((r) => {
        frozen = r;
      });
      const live = await populate(s);
      void s.compact(1, true);
      await atCrash;
      const crashed = `${dir}-crash`;
      let r = await openStore(crashed, { maxVolumeSize: 4 << 20 });
      try {
        const files = (await fs.readdir(crashed)).sort();
        expect(files).toEqual(['1.dat', '1.idx']); // temp files settled deterministically
        await checkStore(r, live, deletedIds);
        // compaction works again afterwards, and the result survives another restart
        await r.compact(1, true);
        await put(r, 'post', blob(77, 1));
        live.set('post', blob(77, 1));
        await r.close();
        r = await openStore(crashed, { maxVolumeSize: 4 << 20 });
        await checkStore(r, live, deletedIds);
      } finally {
        await r.close();
        await fs.rm(crashed, { recursive: true, force: true });
      }
    });

    it(`recovers when step "${crashAt}" fails (error instead of crash), before and after restart`, async () => {
      const dir = await tempDir();
      let s = await openStore(dir, {
        maxVolumeSize: 4 << 20,
        hooks: {
          compactionStep: (step) => {
            if (step === crashAt) throw new Error(`injected failure at ${step}`);
          },
        },
      });
      const live = await populate(s);
      await expect(s.compact(1, true)).rejects.toThrow(/injected/);
      // still serving everything
      for (const [id, data] of live) expect(hex(await get(s, id))).toBe(hex(data));
      await put(s, 'during', blob(50, 2)); // goes to a writable volume (maybe a new one)
      live.set('during', blob(50, 2));
      await s.close();
      s = await openStore(dir, { maxVolumeSize: 4 << 20 });
      await checkStore(s, live, deletedIds);
      expect((await fs.readdir(dir)).filter((f) => f.includes('compact'))).toEqual([]);
      await s.compact(1, true);
      await checkStore(s, live, deletedIds);
    });
  }

  it('a read opened before compaction still streams after the swap', async () => {
    const dir = await tempDir();
    const s = await openStore(dir, { maxVolumeSize: 4 << 20 });
    const live = await populate(s);
    const [id, data] = [...live][5]!;
    const r = await s.openRead(id);
    await s.compact(1, true);
    const parts: Uint8Array[] = [];
    for await (const c of r.stream(0, undefined, 1000)) parts.push(c);
    expect(hex(Buffer.concat(parts))).toBe(hex(data));
    expect((await fs.readdir(dir)).filter((f) => f.endsWith('.dat'))).toEqual(['1.dat']);
    void path;
  });
});
