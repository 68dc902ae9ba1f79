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
 * With a keyring (KEK_FILE) the volume first gets a new key slot (a fresh DEK,
 * saved in `<vid>.keys`), and every data needle is re-encrypted under it with
 * a fresh nonce (crypto/reseal.ts; plaintext needles get encrypted); a needle
 * that does not verify is copied raw. After the commit, `<vid>.keys` keeps only
 * the slots the new file uses. Without one, needles are copied as they are.
 *
 * Records are copied with their stamps. Only the
 * records the map points at (each key's greatest stamp) are kept; every record
 * dropped is superseded by a greater stamp that stays on disk, so the load
 * order (store.ts) reaches the same map after a restart.
 */
import fs, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Keyring } from './crypto/kek.js';
import { resealNeedle } from './crypto/reseal.js';
import { fsyncDir, readFully, unlinkIfExists, writeFully } from './fs-util.js';
import {
  encodeIndexHeader,
  encodeIndexRecords,
  INDEX_HEADER_SIZE,
  type IndexRecord,
  scanIndexFile,
} from './index-file.js';
import { FLAG_DELETED, FLAG_ENCRYPTED, lengthOf } from './needle.js';
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
  /**
   * KEKs: re-encrypt the copied needles under a new DEK. Read at each use: a
   * re-wrap (RewrapKeys) may replace the store's keyring while compaction runs.
   */
  readonly keyring?: Keyring | undefined;
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

    // A new DEK for the new file, saved before any needle is sealed with it.
    const keys = ctx.keyring ? v.keys : undefined;
    const slot = keys?.addSlot();
    if (keys) await keys.save(ctx.dir, ctx.keyring!);
    /** Slots of needles copied raw (they must stay in `<vid>.keys`). */
    const rawSlots = new Set<number>();

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
      const out = nd;
      const write = async (bytes: Uint8Array, at: number) => {
        ctx.hooks.beforeWrite?.('dat', v.id, at, bytes.length);
        await writeFully(out, bytes, at);
      };
      for (const rec of keep) {
        const sealed =
          keys && slot !== undefined && (rec.flags & FLAG_DELETED) === 0
            ? await resealNeedle(oldDat.handle, rec, keys, slot, write, pos)
            : undefined;
        const length = sealed ? sealed.length : lengthOf(rec);
        if (!sealed) {
          // Raw copy (tombstones, no keyring, or a needle that does not verify).
          if ((rec.flags & FLAG_ENCRYPTED) !== 0) {
            const slotOf = v.readHeaderSync(rec.offset)?.keySlot;
            if (slotOf !== undefined) rawSlots.add(slotOf);
          }
          for (let done = 0; done < length; ) {
            const n = Math.min(buf.length, length - done);
            const got = await readFully(oldDat.handle, buf, rec.offset + done, n);
            if (got < n) buf.fill(0, got, n);
            await write(buf.subarray(0, n), pos + done);
            done += n;
          }
        }
        const record = sealed ? { ...sealed.record, offset: pos } : { ...rec, offset: pos };
        moved.push({ rec, newOffset: pos, length });
        batch.push(record);
        if (batch.length >= 4096) await flushIdx();
        pos += length;
      }
      await flushIdx();
      // A needle re-sealed and then copied raw (longer) may have left bytes past the end.
      await nd.truncate(pos);
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
        {
          volumeId: v.id,
          offset: m.newOffset,
          length: m.length,
          deleted: (m.rec.flags & FLAG_DELETED) !== 0,
          stamp: m.rec.writtenAtMs,
        },
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
    if (keys && slot !== undefined) {
      // The old DEKs are no longer needed on disk (memory keeps them for reads in flight).
      keys.retire(rawSlots);
      await keys.save(ctx.dir, ctx.keyring!).catch((err: unknown) => {
        ctx.log.warn({ volumeId: v.id, err: (err as Error).message }, 'could not prune old volume keys');
      });
    }

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
