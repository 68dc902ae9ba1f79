/**
 * Online compaction of one volume. The volume stops taking appends (new
 * writes and tombstones go to other volumes), in-flight appends drain, then
 * every needle the map still points at in this volume (live data and current
 * tombstones) is copied to `<vid>.dat.compact` / `<vid>.idx.compact` (generation
 * + 1) while reads keep using the old file. Then:
 *
 *   fsync both temp files → rename .dat.compact → .dat  (COMMIT POINT)
 *   → swap in memory (map entries moved with compare-and-swap, new handles)
 *   → fsync dir → rename .idx.compact → .idx → fsync dir → appends resume.
 *
 * Crash before the commit point: startup deletes the temp files (old files
 * are untouched). Crash after it: `.dat` has generation g+1; startup installs
 * `.idx.compact` (same generation) or, failing that, rebuilds the index from
 * the volume. Appends to the volume stay blocked until the rename is durable,
 * so nothing acknowledged can depend on a rename that a crash might undo.
 *
 * Needles and records are copied as they are, stamps included. Only the
 * records the map points at (each key's greatest stamp) are kept; every record
 * dropped is superseded by a greater stamp that stays on disk, so the load
 * order (store.ts) reaches the same map after a restart.
 */
import fs, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { fsyncDir, readFully, unlinkIfExists, writeFully } from './fs-util.js';
import {
  encodeIndexHeader,
  encodeIndexRecords,
  INDEX_HEADER_SIZE,
  type IndexRecord,
  scanIndexFile,
} from './index-file.js';
import { needleLength } from './needle.js';
import type { NeedleMap } from './needle-map.js';
import type { RecoveryLogger } from './recovery.js';
import { encodeSuperblock, SUPERBLOCK_SIZE } from './superblock.js';
import { datName, idxName, type StoreHooks, type Volume, VolumeFile } from './volume.js';

export type CompactionStep =
  | 'begin'
  | 'copied'
  | 'synced'
  | 'dat-renamed'
  | 'dir-synced'
  | 'idx-renamed'
  | 'done';

export interface CompactionResult {
  volumeId: number;
  bytesBefore: number;
  bytesAfter: number;
  needlesKept: number;
  durationMs: number;
}

export interface CompactionContext {
  dir: string;
  map: NeedleMap;
  log: RecoveryLogger;
  hooks: StoreHooks & { compactionStep?: (step: CompactionStep, volumeId: number) => void | Promise<void> };
  /** Recomputes a volume's live byte / needle counters from the map. */
  recompute: (v: Volume) => void;
}

export async function compactVolume(ctx: CompactionContext, v: Volume): Promise<CompactionResult> {
  const started = performance.now();
  const step = async (s: CompactionStep) => {
    await ctx.hooks.compactionStep?.(s, v.id);
  };
  v.compacting = true;
  let committed = false;
  const datTmp = path.join(ctx.dir, `${datName(v.id)}.compact`);
  const idxTmp = path.join(ctx.dir, `${idxName(v.id)}.compact`);
  let nd: FileHandle | undefined;
  let ni: FileHandle | undefined;
  try {
    await v.drain();
    await step('begin');
    const bytesBefore = v.tail;
    const gen = v.generation + 1;

    // Snapshot: needles the map currently points at in this volume.
    const keep: IndexRecord[] = [];
    const oldIdx = v.idx;
    oldIdx.acquire();
    try {
      await scanIndexFile(oldIdx.handle, INDEX_HEADER_SIZE, v.idxTail, (r) => {
        const cur = ctx.map.lookup(r.key);
        if (cur && cur.volumeId === v.id && cur.offset === r.offset) keep.push(r);
      });
    } finally {
      oldIdx.release();
    }
    keep.sort((a, b) => a.offset - b.offset);

    nd = await fs.open(datTmp, 'w+');
    ni = await fs.open(idxTmp, 'w+');
    await writeFully(
      nd,
      encodeSuperblock({ volumeId: v.id, generation: gen, createdAtMs: v.createdAtMs }),
      0,
    );
    await writeFully(
      ni,
      encodeIndexHeader({ volumeId: v.id, generation: gen, createdAtMs: v.createdAtMs }),
      0,
    );

    // Copy raw needle bytes (corruption, if any, is preserved and still reported).
    const oldDat = v.dat;
    oldDat.acquire();
    const moved: { rec: IndexRecord; newOffset: number; length: number }[] = [];
    let pos = SUPERBLOCK_SIZE;
    let idxPos = INDEX_HEADER_SIZE;
    try {
      const buf = new Uint8Array(1 << 20);
      let batch: IndexRecord[] = [];
      const flushIdx = async () => {
        if (batch.length === 0) return;
        const bytes = encodeIndexRecords(batch);
        await writeFully(ni!, bytes, idxPos);
        idxPos += bytes.length;
        batch = [];
      };
      for (const rec of keep) {
        const length = needleLength(rec.key.length, rec.dataSize);
        for (let done = 0; done < length; ) {
          const n = Math.min(buf.length, length - done);
          const got = await readFully(oldDat.handle, buf, rec.offset + done, n);
          if (got < n) buf.fill(0, got, n);
          ctx.hooks.beforeWrite?.('dat', v.id, pos + done, n);
          await writeFully(nd, buf.subarray(0, n), pos + done);
          done += n;
        }
        moved.push({ rec, newOffset: pos, length });
        batch.push({ ...rec, offset: pos });
        if (batch.length >= 4096) await flushIdx();
        pos += length;
      }
      await flushIdx();
    } finally {
      oldDat.release();
    }
    await step('copied');
    ctx.hooks.onFsync?.('dat', v.id);
    await nd.sync();
    ctx.hooks.onFsync?.('idx', v.id);
    await ni.sync();
    await step('synced');

    await fs.rename(datTmp, path.join(ctx.dir, datName(v.id))); // commit point
    committed = true;
    // Swap synchronously: no reader can observe a half-moved map.
    for (const m of moved) {
      ctx.map.replace(
        m.rec.key,
        { volumeId: v.id, offset: m.rec.offset },
        { volumeId: v.id, offset: m.newOffset, length: m.length, deleted: (m.rec.flags & 1) !== 0 },
      );
    }
    const retiredDat = v.dat;
    const retiredIdx = v.idx;
    v.dat = new VolumeFile(nd);
    v.idx = new VolumeFile(ni);
    v.generation = gen;
    v.tail = pos;
    v.idxTail = idxPos;
    v.recordCount = moved.length;
    ctx.recompute(v);
    retiredDat.retire();
    retiredIdx.retire();
    await step('dat-renamed');

    ctx.hooks.onFsync?.('dir', v.id);
    await fsyncDir(ctx.dir);
    await step('dir-synced');
    await fs.rename(idxTmp, path.join(ctx.dir, idxName(v.id)));
    ctx.hooks.onFsync?.('dir', v.id);
    await fsyncDir(ctx.dir);
    await step('idx-renamed');

    v.updateReadOnly();
    v.compacting = false;
    await step('done');
    const res: CompactionResult = {
      volumeId: v.id,
      bytesBefore,
      bytesAfter: pos,
      needlesKept: moved.length,
      durationMs: performance.now() - started,
    };
    ctx.log.info({ ...res }, 'volume compacted');
    return res;
  } catch (err) {
    if (!committed) {
      await nd?.close().catch(() => {});
      await ni?.close().catch(() => {});
      await unlinkIfExists(datTmp).catch(() => {});
      await unlinkIfExists(idxTmp).catch(() => {});
      v.compacting = false;
    } else {
      // The new file is live in memory; whether the rename is durable is unknown.
      // Keep appends blocked; a restart settles the files deterministically.
      v.markBroken(
        `compaction could not finish (${(err as Error).message}); restart the store to settle volume ${v.id}`,
      );
      v.compacting = false;
    }
    ctx.log.error({ volumeId: v.id, err: (err as Error).message, committed }, 'compaction failed');
    throw err;
  }
}
