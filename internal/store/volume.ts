/**
 * One volume: `<vid>.dat` (superblock + needles) and `<vid>.idx` (index
 * records), each behind a long-lived FileHandle. Appends reserve a byte range
 * up front (`reserve`), write with positioned writes, and become durable
 * through the volume's group committer (fdatasync .dat → append index records
 * → fdatasync .idx → publish in the needle map).
 */
import { readSync } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { crc32c } from './crc32c.js';
import type { VolumeKeys } from './crypto/volume-keys.js';
import { ChecksumError } from './errors.js';
import { readFully, writeFully, writevFully } from './fs-util.js';
import { GroupCommitter } from './group-commit.js';
import { encodeIndexHeader, encodeIndexRecords, INDEX_HEADER_SIZE, type IndexRecord } from './index-file.js';
import {
  dataOffsetOf,
  decodeFooter,
  decodeHeader,
  footerSize,
  lengthOf,
  MAX_HEADER_LENGTH,
  type NeedleHeader,
} from './needle.js';
import { encodeSuperblock, SUPERBLOCK_SIZE } from './superblock.js';

export type FileKind = 'dat' | 'idx' | 'dir';

export interface StoreHooks {
  /** Called before every fdatasync/fsync (counting group commits in tests). */
  onFsync?: (file: FileKind, volumeId: number) => void;
  /** Awaited before a group commit's fdatasyncs: the slow-disk seam (FAULT_FSYNC_DELAY). */
  beforeFsync?: (file: 'dat' | 'idx', volumeId: number) => Promise<void>;
  /** Called before every write to a volume or index file; throw to inject faults (e.g. ENOSPC). */
  beforeWrite?: (file: 'dat' | 'idx', volumeId: number, position: number, length: number) => void;
  /** After every group commit (volume fdatasync + index append + fdatasync): duration in seconds (metrics). */
  onGroupCommit?: (volumeId: number, seconds: number, items: number, ok: boolean) => void;
}

export const datName = (id: number) => `${id}.dat`;
export const idxName = (id: number) => `${id}.idx`;

/** An open file that may be retired (replaced by compaction) while readers still use it. */
export class VolumeFile {
  refs = 0;
  retired = false;
  closed = false;
  constructor(readonly handle: FileHandle) {}

  /** Takes a reference; false if the file is already closed. */
  acquire(): boolean {
    if (this.closed) return false;
    this.refs++;
    return true;
  }
  release(): void {
    this.refs--;
    if (this.retired && this.refs === 0) void this.closeNow();
  }
  retire(): void {
    this.retired = true;
    if (this.refs === 0) void this.closeNow();
  }
  async closeNow(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close().catch(() => {});
  }
}

/** What the group committer needs for one needle. */
export interface PendingCommit {
  record: IndexRecord;
  /** Runs synchronously once .dat and .idx are durable (publishes to the map). */
  onDurable: () => void;
}

/** Released ranges a volume remembers while waiting for the tail to reach them. */
const MAX_RELEASED = 10_000;

export class Volume {
  /** Next reservation offset (logical end of the volume). */
  tail: number;
  idxTail: number;
  readOnly = false;
  /** Set when an I/O failure makes appends unsafe; reads continue. */
  broken: string | undefined;
  compacting = false;
  /** The volume's DEKs when the store has a KEK (new needles are encrypted); undefined: plaintext. */
  keys: VolumeKeys | undefined;
  inflight = 0;
  liveBytes = 0;
  needleCount = 0;
  recordCount = 0;
  private drainWaiters: (() => void)[] = [];
  /** Aborted reservations not yet given back to the tail: end offset → start offset. */
  private released = new Map<number, number>();
  readonly committer: GroupCommitter<PendingCommit>;
  private readonly keyBuf = new Uint8Array(MAX_HEADER_LENGTH);

  constructor(
    readonly id: number,
    readonly dir: string,
    public dat: VolumeFile,
    public idx: VolumeFile,
    public generation: number,
    readonly createdAtMs: number,
    size: number,
    idxSize: number,
    readonly maxSize: number,
    private readonly hooks: StoreHooks,
  ) {
    this.tail = size;
    this.idxTail = idxSize;
    this.committer = new GroupCommitter(
      (items) => this.flush(items),
      (seconds, n, ok) => this.hooks.onGroupCommit?.(this.id, seconds, n, ok),
    );
    this.updateReadOnly();
  }

  get datPath(): string {
    return path.join(this.dir, datName(this.id));
  }
  get idxPath(): string {
    return path.join(this.dir, idxName(this.id));
  }

  /** Volumes with less than this left are sealed (read-only). */
  get sealSlack(): number {
    return Math.floor(this.maxSize / 8);
  }
  updateReadOnly(): void {
    this.readOnly = this.maxSize - this.tail < this.sealSlack;
  }

  get writable(): boolean {
    return !this.readOnly && !this.compacting && this.broken === undefined;
  }

  /** Reserves `length` bytes at the tail; null if the volume cannot take them. */
  reserve(length: number): number | null {
    if (!this.writable) return null;
    if (this.tail + length > this.maxSize) {
      if (this.maxSize - this.tail < this.sealSlack) this.readOnly = true;
      return null;
    }
    const at = this.tail;
    this.tail += length;
    this.inflight++;
    return at;
  }

  /**
   * Reserves room for a tombstone even when the volume is sealed: a store whose
   * volumes are all full must still be able to delete, or it could never free
   * space. Tombstones may overrun MAX_VOLUME_SIZE by at most 1/64 of it.
   */
  reserveTombstone(length: number): number | null {
    if (this.compacting || this.broken !== undefined) return null;
    if (this.tail + length > this.maxSize + Math.floor(this.maxSize / 64)) return null;
    const at = this.tail;
    this.tail += length;
    this.inflight++;
    return at;
  }

  /**
   * Gives back the reservation [offset, offset + length) of a write that stored
   * nothing (cancelled, short, bad checksum). At the tail, the tail moves back
   * (past any released ranges that uncovers), so cancelled uploads neither fill
   * nor seal a volume; elsewhere it stays a hole, counted as garbage until
   * compaction. Bytes already written there are past the tail (overwritten by the
   * next append, cut by recovery's tail scan) or in the hole (never indexed).
   * Call before `finish`.
   */
  release(offset: number, length: number): void {
    if (this.released.size >= MAX_RELEASED) this.released.clear(); // holes stay holes
    this.released.set(offset + length, offset);
    let start = this.released.get(this.tail);
    if (start === undefined) return;
    while (start !== undefined) {
      this.released.delete(this.tail);
      this.tail = start;
      start = this.released.get(this.tail);
    }
    this.updateReadOnly();
  }

  /** Ends an in-flight reservation (committed or aborted). */
  finish(): void {
    this.inflight--;
    if (this.inflight === 0) {
      const w = this.drainWaiters;
      this.drainWaiters = [];
      for (const f of w) f();
    }
  }

  /** Resolves when no reservation is in flight. */
  drain(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((r) => this.drainWaiters.push(r));
  }

  markBroken(reason: string): void {
    this.broken ??= reason;
  }

  async writeDat(buf: Uint8Array, position: number): Promise<void> {
    this.hooks.beforeWrite?.('dat', this.id, position, buf.length);
    await writeFully(this.dat.handle, buf, position);
  }

  /** Writes `bufs` back to back from `position` in one call (the fault hook sees one write of their total length). */
  async writevDat(bufs: readonly Uint8Array[], position: number): Promise<void> {
    let length = 0;
    for (const b of bufs) length += b.length;
    this.hooks.beforeWrite?.('dat', this.id, position, length);
    await writevFully(this.dat.handle, bufs, position);
  }

  private async flush(items: PendingCommit[]): Promise<void> {
    this.hooks.onFsync?.('dat', this.id);
    try {
      await this.hooks.beforeFsync?.('dat', this.id);
      await this.dat.handle.datasync();
    } catch (err) {
      this.markBroken(`fdatasync of ${datName(this.id)} failed: ${(err as Error).message}`);
      throw err;
    }
    const bytes = encodeIndexRecords(items.map((i) => i.record));
    const at = this.idxTail;
    try {
      this.hooks.beforeWrite?.('idx', this.id, at, bytes.length);
      await writeFully(this.idx.handle, bytes, at);
      this.hooks.onFsync?.('idx', this.id);
      await this.hooks.beforeFsync?.('idx', this.id);
      await this.idx.handle.datasync();
    } catch (err) {
      // Cut whatever part of the batch reached the index so it cannot resurface.
      try {
        await this.idx.handle.truncate(at);
      } catch {
        this.markBroken(`index ${idxName(this.id)} could not be repaired after a failed append`);
      }
      throw err;
    }
    this.idxTail = at + bytes.length;
    this.recordCount += items.length;
    for (const i of items) i.onDurable();
  }

  /** Synchronously reads the blob id stored in the needle header at `offset` (needle map key check). */
  readKeySync(offset: number): string | undefined {
    return this.readHeaderSync(offset)?.key;
  }

  /** Synchronously reads and verifies the needle header at `offset`; undefined if unreadable. */
  readHeaderSync(offset: number): NeedleHeader | undefined {
    try {
      const n = fsReadSync(this.dat.handle.fd, this.keyBuf, offset);
      return decodeHeader(this.keyBuf.subarray(0, n));
    } catch {
      return undefined;
    }
  }

  async close(): Promise<void> {
    await this.dat.closeNow();
    await this.idx.closeNow();
  }
}

function fsReadSync(fd: number, buf: Uint8Array, position: number): number {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** Creates an empty volume durably: `.dat.new` → fsync → `.idx` → fsync → rename → (caller fsyncs dir). */
export async function createVolumeFiles(
  dir: string,
  id: number,
  createdAtMs: number,
  hooks: StoreHooks,
): Promise<{ dat: FileHandle; idx: FileHandle }> {
  const tmp = path.join(dir, `${datName(id)}.new`);
  const dat = await fs.open(tmp, 'w+');
  let idx: FileHandle | undefined;
  try {
    hooks.beforeWrite?.('dat', id, 0, SUPERBLOCK_SIZE);
    await writeFully(dat, encodeSuperblock({ volumeId: id, generation: 0, createdAtMs }), 0);
    hooks.onFsync?.('dat', id);
    await dat.sync();
    idx = await fs.open(path.join(dir, idxName(id)), 'w+');
    hooks.beforeWrite?.('idx', id, 0, INDEX_HEADER_SIZE);
    await writeFully(idx, encodeIndexHeader({ volumeId: id, generation: 0, createdAtMs }), 0);
    hooks.onFsync?.('idx', id);
    await idx.sync();
    await fs.rename(tmp, path.join(dir, datName(id)));
    return { dat, idx };
  } catch (err) {
    await dat.close().catch(() => {});
    await idx?.close().catch(() => {});
    await fs.unlink(tmp).catch(() => {});
    await fs.unlink(path.join(dir, idxName(id))).catch(() => {});
    throw err;
  }
}

export interface ScannedNeedle {
  header: NeedleHeader;
  offset: number;
  length: number;
  crc32c: number;
}

/**
 * Walks needles by their framing from `start` to `end`, fully verifying each
 * (header CRC, footer magic and CRC, data CRC). Valid needles go to `onValid`; needles
 * with a valid header but bad data/footer (aborted writes, corruption) to
 * `onInvalid` and are skipped by their length. Stops where the framing breaks
 * (unreadable header, needle running past `end`). Returns that position and
 * the end of the last valid needle.
 */
export async function scanNeedles(
  h: FileHandle,
  start: number,
  end: number,
  onValid: (n: ScannedNeedle) => void,
  onInvalid?: (offset: number, length: number, reason: string) => void,
): Promise<{ stop: number; lastValidEnd: number; stopReason?: string; tornTail?: boolean }> {
  let pos = start;
  let lastValidEnd = start;
  const head = new Uint8Array(MAX_HEADER_LENGTH);
  const chunk = new Uint8Array(1 << 20);
  while (pos < end) {
    const n = await readFully(h, head, pos, Math.min(head.length, end - pos));
    let header: NeedleHeader;
    try {
      header = decodeHeader(head.subarray(0, n));
    } catch (err) {
      const tornTail = err instanceof ChecksumError && err.kind === 'truncated';
      return { stop: pos, lastValidEnd, stopReason: (err as Error).message, tornTail };
    }
    const length = lengthOf(header);
    if (pos + length > end) {
      return { stop: pos, lastValidEnd, stopReason: 'needle runs past the end of the file', tornTail: true };
    }
    let crc = 0;
    let at = pos + dataOffsetOf(header);
    let left = header.dataSize;
    let short = false;
    while (left > 0) {
      const want = Math.min(left, chunk.length);
      const got = await readFully(h, chunk, at, want);
      if (got < want) {
        short = true;
        break;
      }
      crc = crc32c(chunk, crc, 0, want);
      at += want;
      left -= want;
    }
    let reason: string | undefined;
    if (short) reason = 'data is truncated';
    else {
      const foot = new Uint8Array(footerSize(header.flags));
      const got = await readFully(h, foot, at);
      try {
        const stored = decodeFooter(foot.subarray(0, got), 0, undefined, header.flags);
        if (stored !== crc) reason = 'data checksum mismatch';
      } catch (err) {
        reason = err instanceof ChecksumError ? err.message : String(err);
      }
    }
    if (reason === undefined) {
      onValid({ header, offset: pos, length, crc32c: crc });
      lastValidEnd = pos + length;
    } else {
      onInvalid?.(pos, length, reason);
    }
    pos += length;
  }
  return { stop: pos, lastValidEnd };
}
