/**
 * Startup: settle leftovers of interrupted volume creation / compaction, then
 * open each volume: load its index file (cutting a torn tail), verify it
 * matches the volume, and scan the volume from the end of the last indexed
 * needle to recover needles that reached the volume but not the index,
 * truncating a torn tail. An index that is missing, from another generation,
 * or pointing past the volume is rebuilt from a full scan.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { ChecksumError } from './errors.js';
import { fsyncDir, readFully, unlinkIfExists, writeFully } from './fs-util.js';
import {
  decodeIndexHeader,
  encodeIndexHeader,
  encodeIndexRecords,
  INDEX_HEADER_SIZE,
  type IndexRecord,
  scanIndexFile,
} from './index-file.js';
import { decodeHeader, FLAG_DELETED, lengthOf, MAX_HEADER_LENGTH, type NeedleHeader } from './needle.js';
import { decodeSuperblock, SUPERBLOCK_SIZE } from './superblock.js';
import { datName, idxName, type StoreHooks, scanNeedles, Volume, VolumeFile } from './volume.js';

export interface RecoveryLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const VOLUME_FILE = /^(\d+)\.(dat|idx)(?:\.(new|compact|rebuild))?$/;

async function readGeneration(file: string, kind: 'dat' | 'idx'): Promise<number | undefined> {
  try {
    const h = await fs.open(file, 'r');
    try {
      const buf = new Uint8Array(SUPERBLOCK_SIZE);
      const n = await readFully(h, buf, 0);
      return kind === 'dat'
        ? decodeSuperblock(buf.subarray(0, n)).generation
        : decodeIndexHeader(buf.subarray(0, n)).generation;
    } finally {
      await h.close();
    }
  } catch {
    return undefined;
  }
}

/**
 * Deterministically resolves temp files left by a crash and returns the ids of
 * the volumes present (ascending):
 * - `N.dat.new` (creation not committed) → deleted;
 * - `N.dat.compact` (compaction before its commit point) → deleted with `N.idx.compact`;
 * - `N.idx.compact` alone (crash after the .dat rename) → renamed to `N.idx` if its
 *   generation equals `N.dat`'s, else deleted;
 * - `N.idx.rebuild` → deleted; `N.idx` without `N.dat` → deleted.
 */
export async function settleDirectory(dir: string, log: RecoveryLogger): Promise<number[]> {
  const names = new Set(await fs.readdir(dir));
  let changed = false;
  const drop = async (name: string, why: string) => {
    log.warn({ file: name }, `removing ${why}`);
    await unlinkIfExists(path.join(dir, name));
    names.delete(name);
    changed = true;
  };
  for (const name of [...names]) {
    const m = VOLUME_FILE.exec(name);
    if (!m || !names.has(name)) continue;
    const id = Number(m[1]);
    if (m[3] === 'new') await drop(name, 'volume file of an interrupted volume creation');
    else if (m[3] === 'rebuild') await drop(name, 'interrupted index rebuild');
    else if (m[3] === 'compact' && m[2] === 'dat') {
      await drop(name, 'interrupted compaction output (not committed)');
      if (names.has(`${idxName(id)}.compact`))
        await drop(`${idxName(id)}.compact`, 'interrupted compaction index');
    }
  }
  for (const name of [...names]) {
    const m = VOLUME_FILE.exec(name);
    if (m?.[3] !== 'compact' || m[2] !== 'idx') continue;
    const id = Number(m[1]);
    const datGen = await readGeneration(path.join(dir, datName(id)), 'dat');
    const idxGen = await readGeneration(path.join(dir, name), 'idx');
    if (datGen !== undefined && datGen === idxGen) {
      log.warn({ volumeId: id }, 'completing an interrupted compaction (installing its index)');
      await fs.rename(path.join(dir, name), path.join(dir, idxName(id)));
      names.delete(name);
      changed = true;
    } else {
      await drop(name, 'stale compaction index');
    }
  }
  const ids: number[] = [];
  for (const name of [...names]) {
    const m = VOLUME_FILE.exec(name);
    if (!m || m[3] !== undefined) continue;
    const id = Number(m[1]);
    if (m[2] === 'idx' && !names.has(datName(id))) await drop(name, 'index without a volume');
    if (m[2] === 'dat') ids.push(id);
  }
  if (changed) await fsyncDir(dir);
  return ids.sort((a, b) => a - b);
}

export interface OpenVolumeOptions {
  dir: string;
  id: number;
  maxVolumeSize: number;
  hooks: StoreHooks;
  log: RecoveryLogger;
  /** Makes the volume visible (so the needle map can read keys from it) before records are applied. */
  register: (v: Volume) => void;
  /** Applies one committed record to the needle map. */
  apply: (v: Volume, record: IndexRecord) => void;
}

export interface OpenVolumeReport {
  indexed: number;
  recovered: number;
  truncatedBytes: number;
  rebuilt: boolean;
  idxCut: number;
}

function recordFromScan(h: NeedleHeader, offset: number): IndexRecord {
  return {
    key: h.key,
    flags: h.flags,
    offset,
    dataSize: h.dataSize,
    cookie: h.cookie,
    writtenAtMs: h.writtenAtMs,
    metaLen: h.metaLen ?? 0,
  };
}

export async function openVolume(
  o: OpenVolumeOptions,
): Promise<{ volume: Volume; report: OpenVolumeReport }> {
  const { dir, id, log } = o;
  const datPath = path.join(dir, datName(id));
  const idxPath = path.join(dir, idxName(id));
  const datHandle = await fs.open(datPath, 'r+');
  const sbBuf = new Uint8Array(SUPERBLOCK_SIZE);
  let datSize: number;
  let sb: ReturnType<typeof decodeSuperblock>;
  try {
    sb = decodeSuperblock(sbBuf.subarray(0, await readFully(datHandle, sbBuf, 0)));
    if (sb.volumeId !== id) {
      throw new ChecksumError(`${datName(id)} holds volume ${sb.volumeId}`, 'superblock', id, 0);
    }
    datSize = (await datHandle.stat()).size;
  } catch (err) {
    await datHandle.close();
    throw err;
  }

  const report: OpenVolumeReport = { indexed: 0, recovered: 0, truncatedBytes: 0, rebuilt: false, idxCut: 0 };
  // ---- index: validate (pass 1) ----
  let idxHandle: Awaited<ReturnType<typeof fs.open>> | undefined;
  let rebuildReason: string | undefined;
  let maxEnd = SUPERBLOCK_SIZE;
  let lastRecord: IndexRecord | undefined;
  let idxEnd = INDEX_HEADER_SIZE;
  try {
    idxHandle = await fs.open(idxPath, 'r+');
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOENT') throw err;
    rebuildReason = 'index file is missing';
  }
  if (idxHandle) {
    const idxSize = (await idxHandle.stat()).size;
    const hb = new Uint8Array(INDEX_HEADER_SIZE);
    try {
      const ih = decodeIndexHeader(hb.subarray(0, await readFully(idxHandle, hb, 0)));
      if (ih.volumeId !== id || ih.generation !== sb.generation) {
        rebuildReason = `index generation ${ih.generation} does not match volume generation ${sb.generation}`;
      }
    } catch (err) {
      rebuildReason = `index header unreadable: ${(err as Error).message}`;
    }
    if (rebuildReason === undefined) {
      idxEnd = await scanIndexFile(idxHandle, INDEX_HEADER_SIZE, idxSize, (r) => {
        const end = r.offset + lengthOf(r);
        if (
          r.offset < SUPERBLOCK_SIZE ||
          r.offset % 8 !== 0 ||
          end > datSize ||
          ((r.flags & FLAG_DELETED) !== 0 && r.dataSize !== 0)
        ) {
          rebuildReason ??= `index record for ${r.key} at ${r.offset} points past the volume end ${datSize}`;
        }
        if (end > maxEnd) {
          maxEnd = end;
          lastRecord = r;
        }
      });
      if (idxEnd < idxSize) report.idxCut = idxSize - idxEnd;
    }
    if (rebuildReason === undefined && lastRecord) {
      // The index must describe this volume: check the furthest needle's header.
      const buf = new Uint8Array(MAX_HEADER_LENGTH);
      try {
        const h = decodeHeader(buf.subarray(0, await readFully(datHandle, buf, lastRecord.offset)));
        if (
          h.key !== lastRecord.key ||
          h.dataSize !== lastRecord.dataSize ||
          h.flags !== lastRecord.flags ||
          h.metaLen !== (lastRecord.metaLen ?? 0)
        ) {
          rebuildReason = 'index does not match the volume contents';
        }
      } catch (err) {
        rebuildReason = `indexed needle unreadable: ${(err as Error).message}`;
      }
    }
  }

  const hooks = o.hooks;
  const recovered: IndexRecord[] = [];
  let volume: Volume;
  if (rebuildReason !== undefined) {
    // ---- full rebuild from the volume ----
    report.rebuilt = true;
    log.warn({ volumeId: id, reason: rebuildReason }, 'rebuilding index from a full volume scan');
    await idxHandle?.close();
    const scan = await scanNeedles(datHandle, SUPERBLOCK_SIZE, datSize, (n) =>
      recovered.push(recordFromScan(n.header, n.offset)),
    );
    // A break at the very tail (needle/header running past EOF) is a torn append: cut it.
    // A break elsewhere hides whatever follows; keep the bytes and seal the volume.
    let end = Math.max(scan.lastValidEnd, SUPERBLOCK_SIZE);
    let brokenAt: number | undefined;
    if (scan.stop < datSize && !scan.tornTail) {
      brokenAt = scan.stop;
      end = datSize;
      log.error(
        { volumeId: id, offset: brokenAt, reason: scan.stopReason },
        'volume framing broken during rebuild; needles after this offset are not indexed and the volume is sealed',
      );
    }
    if (end < datSize) {
      report.truncatedBytes = datSize - end;
      await datHandle.truncate(end);
      hooks.onFsync?.('dat', id);
      await datHandle.sync();
      datSize = end;
    }
    const tmp = `${idxPath}.rebuild`;
    const nh = await fs.open(tmp, 'w+');
    const body = encodeIndexRecords(recovered);
    await writeFully(
      nh,
      encodeIndexHeader({ volumeId: id, generation: sb.generation, createdAtMs: sb.createdAtMs }),
      0,
    );
    await writeFully(nh, body, INDEX_HEADER_SIZE);
    hooks.onFsync?.('idx', id);
    await nh.sync();
    await fs.rename(tmp, idxPath);
    hooks.onFsync?.('dir', id);
    await fsyncDir(dir);
    volume = new Volume(
      id,
      dir,
      new VolumeFile(datHandle),
      new VolumeFile(nh),
      sb.generation,
      sb.createdAtMs,
      datSize,
      INDEX_HEADER_SIZE + body.length,
      o.maxVolumeSize,
      hooks,
    );
    if (brokenAt !== undefined) volume.markBroken(`unreadable region at offset ${brokenAt}`);
    o.register(volume);
    for (const r of recovered) o.apply(volume, r);
    volume.recordCount = recovered.length;
    report.recovered = recovered.length;
    return { volume, report };
  }

  // ---- tail scan: needles after the last indexed one ----
  const ih = idxHandle!;
  if (report.idxCut > 0) {
    log.warn({ volumeId: id, bytes: report.idxCut }, 'cutting torn records at the end of the index');
    await ih.truncate(idxEnd);
  }
  const scan = await scanNeedles(datHandle, maxEnd, datSize, (n) =>
    recovered.push(recordFromScan(n.header, n.offset)),
  );
  const end = Math.max(maxEnd, scan.lastValidEnd);
  if (end < datSize) {
    report.truncatedBytes = datSize - end;
    log.warn(
      { volumeId: id, offset: end, bytes: datSize - end, reason: scan.stopReason },
      'truncating torn volume tail',
    );
    await datHandle.truncate(end);
    hooks.onFsync?.('dat', id);
    await datHandle.sync();
    datSize = end;
  }
  if (recovered.length > 0) {
    log.info({ volumeId: id, needles: recovered.length }, 'recovered needles missing from the index');
    const body = encodeIndexRecords(recovered);
    await writeFully(ih, body, idxEnd);
    idxEnd += body.length;
  }
  if (recovered.length > 0 || report.idxCut > 0) {
    hooks.onFsync?.('idx', id);
    await ih.sync();
  }
  volume = new Volume(
    id,
    dir,
    new VolumeFile(datHandle),
    new VolumeFile(ih),
    sb.generation,
    sb.createdAtMs,
    datSize,
    idxEnd,
    o.maxVolumeSize,
    hooks,
  );
  o.register(volume);
  // ---- pass 2: apply ----
  let n = 0;
  await scanIndexFile(ih, INDEX_HEADER_SIZE, idxEnd, (r) => {
    o.apply(volume, r);
    n++;
  });
  volume.recordCount = n;
  report.indexed = n - recovered.length;
  report.recovered = recovered.length;
  return { volume, report };
}
