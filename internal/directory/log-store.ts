import { type FileHandle, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { LogEntry, MetadataSnapshot } from '../../gen/haystack/v1/metadata_pb.js';
import { fsyncDir, writeAtomic } from '../common/atomic-file.js';
import type { Logger } from '../server/logger.js';
import { decodeLog, decodeSnapshot, encodeRecord, encodeSnapshot, LogCorruptError } from './log-codec.js';

const LOG_FILE = 'metadata.log';
const SNAPSHOT_FILE = 'metadata.snapshot';
const TERM_FILE = 'term.json';

/** Thrown to a waiter whose entry was cut from the log before it became durable. */
export class TruncatedError extends Error {
  constructor(index: bigint) {
    super(`log entry ${index} was truncated before it became durable`);
    this.name = 'TruncatedError';
  }
}

/**
 * The metadata log on disk (I/O side; the format is log-codec.ts).
 *
 * Entries are kept in memory from the first retained index; every change to the
 * file (append, truncate of a suffix, rewrite after a snapshot) is queued in order
 * on one I/O chain, with file positions fixed when the change is made. fsyncs run
 * beside that chain and are shared (group commit): each covers every write that
 * completed before it started, and every caller waiting for an index it covers.
 */
export class LogStore {
  private entries: LogEntry[] = [];
  /** The chain of term.json writes (serialized). */
  private termWrites: Promise<void> = Promise.resolve();
  /** File position of each entry's record (parallel to entries). */
  private offsets: number[] = [];
  /** Index before entries[0]. */
  private base = 0n;
  /** End of the file once every queued write has run. */
  private fileSize = 0;
  private pending: { pos: number; bufs: Buffer[]; last: bigint } | null = null;
  private io: Promise<void> = Promise.resolve();
  /** Highest index whose write completed (in the current generation of the file). */
  private written = 0n;
  /** Highest index known on disk (fsync'd). */
  private durable = 0n;
  /** Bumped when the file's content is cut or replaced: an fsync started before does not count. */
  private gen = 0;
  private waiters: { index: bigint; resolve: () => void; reject: (e: Error) => void }[] = [];
  private syncing: Promise<void> | null = null;
  private failed: Error | null = null;
  private replacing = false;
  private durableListeners = new Set<(index: bigint) => void>();
  /** The latest snapshot (its state covers every index up to snapshot.index). */
  snapshot: MetadataSnapshot | null = null;
  /** Highest term this instance has promised to follow (persisted). */
  currentTerm = 0n;
  /** The instance it accepted as leader (candidate) of currentTerm, '' when none yet. */
  votedFor = '';

  private constructor(
    readonly dir: string,
    private fh: FileHandle,
    private readonly log: Logger,
    private readonly onFatal: (err: Error) => void,
  ) {}

  static async open(dir: string, log: Logger, onFatal: (err: Error) => void): Promise<LogStore> {
    await mkdir(dir, { recursive: true });
    const logPath = path.join(dir, LOG_FILE);
    let snapshot: MetadataSnapshot | null = null;
    const snapBytes = await readIfExists(path.join(dir, SNAPSHOT_FILE));
    if (snapBytes) {
      try {
        snapshot = decodeSnapshot(snapBytes);
      } catch (err) {
        throw withPath(err, path.join(dir, SNAPSHOT_FILE));
      }
    }
    let currentTerm = 0n;
    const votedFor = '';
    const termBytes = await readIfExists(path.join(dir, TERM_FILE));
    if (termBytes) {
      try {
        const parsed = JSON.parse(termBytes.toString('utf8')) as { currentTerm?: unknown };
        if (typeof parsed.currentTerm !== 'string' || !/^\d+$/.test(parsed.currentTerm))
          throw new Error('bad');
        currentTerm = BigInt(parsed.currentTerm);
      } catch {
        throw new LogCorruptError(`${path.join(dir, TERM_FILE)} is corrupt: expected {"currentTerm":"<n>"}`);
      }
    }
    const bytes = (await readIfExists(logPath)) ?? Buffer.alloc(0);
    let decoded: ReturnType<typeof decodeLog>;
    try {
      decoded = decodeLog(bytes);
    } catch (err) {
      throw withPath(err, logPath);
    }
    const fh = await open(logPath, bytes.length > 0 || (await exists(logPath)) ? 'r+' : 'w+');
    const store = new LogStore(dir, fh, log, onFatal);
    store.snapshot = snapshot;
    store.currentTerm = currentTerm;
    store.votedFor = votedFor;
    if (decoded.tornTail) {
      log.warn(
        { file: logPath, cutAtByte: decoded.validBytes, reason: decoded.tornTail },
        'metadata log: cutting a torn tail left by a crash (never acknowledged)',
      );
      await fh.truncate(decoded.validBytes);
    }
    store.entries = decoded.entries;
    store.offsets = decoded.offsets;
    store.fileSize = decoded.validBytes;
    const first = decoded.entries[0];
    store.base = first ? first.index - 1n : (snapshot?.index ?? 0n);
    if (snapshot) {
      const t = store.termAt(snapshot.index);
      if (store.base > snapshot.index || (snapshot.index > 0n && t !== snapshot.term)) {
        // The snapshot was installed but the log not yet reset (crash in between),
        // or the log is older than the snapshot: the snapshot wins.
        log.warn(
          { snapshotIndex: snapshot.index, logFirst: store.base + 1n, logLast: store.lastIndex },
          'metadata log does not continue the snapshot: starting the log after the snapshot',
        );
        store.entries = [];
        store.offsets = [];
        store.base = snapshot.index;
        store.fileSize = 0;
        await fh.truncate(0);
      }
    }
    await fh.datasync();
    store.written = store.lastIndex;
    store.durable = store.lastIndex;
    return store;
  }

  get firstIndex(): bigint {
    return this.base + 1n;
  }

  get lastIndex(): bigint {
    return this.base + BigInt(this.entries.length);
  }

  get lastTerm(): bigint {
    return this.termAt(this.lastIndex) ?? 0n;
  }

  get durableIndex(): bigint {
    return this.durable;
  }

  /** Term of the entry at `index` (the snapshot's for its index, 0 for 0), else undefined. */
  termAt(index: bigint): bigint | undefined {
    if (index === 0n) return 0n;
    if (index > this.base && index <= this.lastIndex)
      return this.entries[Number(index - this.base - 1n)]?.term;
    if (this.snapshot && index === this.snapshot.index) return this.snapshot.term;
    return undefined;
  }

  entry(index: bigint): LogEntry | undefined {
    if (index <= this.base || index > this.lastIndex) return undefined;
    return this.entries[Number(index - this.base - 1n)];
  }

  /** Up to `max` entries from `from` (inclusive). */
  slice(from: bigint, max: number): LogEntry[] {
    if (from <= this.base) throw new Error(`entries before ${this.base + 1n} are compacted`);
    const start = Number(from - this.base - 1n);
    return this.entries.slice(start, start + max);
  }

  onDurable(listener: (index: bigint) => void): () => void {
    this.durableListeners.add(listener);
    return () => this.durableListeners.delete(listener);
  }

  /** Appends entries (must continue the log without a gap); durable later, see waitDurable. */
  append(entries: readonly LogEntry[]): void {
    if (this.failed) throw this.failed;
    for (const e of entries) {
      if (e.index !== this.lastIndex + 1n) {
        throw new Error(`append: entry ${e.index} does not follow last index ${this.lastIndex}`);
      }
      const rec = encodeRecord(e);
      if (!this.pending) {
        this.pending = { pos: this.fileSize, bufs: [], last: e.index };
        queueMicrotask(() => this.flushPending());
      }
      this.entries.push(e);
      this.offsets.push(this.fileSize);
      this.pending.bufs.push(rec);
      this.pending.last = e.index;
      this.fileSize += rec.length;
    }
  }

  private flushPending(): void {
    const p = this.pending;
    if (!p) return;
    this.pending = null;
    const buf = p.bufs.length === 1 ? (p.bufs[0] as Buffer) : Buffer.concat(p.bufs);
    const gen = this.gen;
    this.enqueue(async () => {
      await this.fh.write(buf, 0, buf.length, p.pos);
      // A write from before a truncation/rewrite counts only through that later op.
      if (gen === this.gen && p.last > this.written) this.written = p.last;
      this.kickSync();
    });
  }

  private enqueue(op: () => Promise<void>): Promise<void> {
    const run = this.io.then(async () => {
      if (this.failed) throw this.failed;
      try {
        await op();
      } catch (err) {
        this.fail(err);
        throw err;
      }
    });
    this.io = run.catch(() => {});
    return run;
  }

  private fail(err: unknown): void {
    if (this.failed) return;
    this.failed = err instanceof Error ? err : new Error(String(err));
    this.log.fatal({ err: this.failed }, 'metadata log I/O failed');
    for (const w of this.waiters) w.reject(this.failed);
    this.waiters = [];
    this.onFatal(this.failed);
  }

  /** Resolves once every entry up to `index` is fsync'd (group commit). */
  waitDurable(index: bigint): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (index <= this.durable) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.waiters.push({ index, resolve, reject });
      this.kickSync();
    });
  }

  private kickSync(): void {
    if (this.syncing || this.failed || this.replacing) return;
    if (!this.waiters.some((w) => w.index > this.durable) || this.written <= this.durable) return;
    this.syncing = (async () => {
      try {
        while (
          !this.failed &&
          this.written > this.durable &&
          this.waiters.some((w) => w.index > this.durable)
        ) {
          const target = this.written;
          const gen = this.gen;
          await this.fh.datasync();
          if (gen === this.gen && target > this.durable) this.setDurable(target);
        }
      } catch (err) {
        this.fail(err);
      } finally {
        this.syncing = null;
      }
      this.kickSync();
    })();
  }

  private setDurable(index: bigint): void {
    this.durable = index;
    const ready = this.waiters.filter((w) => w.index <= index);
    this.waiters = this.waiters.filter((w) => w.index > index);
    for (const w of ready) w.resolve();
    for (const l of this.durableListeners) l(index);
  }

  /** Removes entries from `index` on (a conflicting suffix). Resolves once the cut is on disk. */
  async truncateFrom(index: bigint): Promise<void> {
    if (index > this.lastIndex) return;
    if (index <= this.base) throw new Error(`truncate: ${index} is at or before the first retained entry`);
    this.flushPending();
    const k = Number(index - this.base - 1n);
    const pos = this.offsets[k] as number;
    this.entries.length = k;
    this.offsets.length = k;
    this.fileSize = pos;
    const keep = index - 1n;
    this.gen++;
    if (this.written > keep) this.written = keep;
    if (this.durable > keep) this.durable = keep;
    const cut = this.waiters.filter((w) => w.index > keep);
    this.waiters = this.waiters.filter((w) => w.index <= keep);
    for (const w of cut) w.reject(new TruncatedError(w.index));
    const gen = this.gen;
    await this.enqueue(async () => {
      await this.fh.truncate(pos);
      await this.fh.datasync();
      // Every write before this op has completed, and the cut file is on disk.
      if (gen === this.gen) {
        if (keep > this.written) this.written = keep;
        if (keep > this.durable) this.setDurable(keep);
      }
      this.kickSync();
    });
  }

  /**
   * Persists the highest term this instance follows and who leads it (before acting
   * on it). A lower term is ignored; the same term only fills in an empty leader.
   */
  async setCurrentTerm(term: bigint, votedFor = ''): Promise<void> {
    if (term < this.currentTerm) return;
    if (term === this.currentTerm && (this.votedFor !== '' || votedFor === '')) return;
    this.currentTerm = term;
    this.votedFor = votedFor;
    // One write at a time, each of the latest (term, vote): concurrent callers (a candidacy
    // and a newer term seen on the wire) shared one temp file, so a rename failed with
    // ENOENT and an older term could land on disk last (found by test/netns).
    const write = this.termWrites.then(() =>
      writeAtomic(
        this.dir,
        TERM_FILE,
        Buffer.from(JSON.stringify({ currentTerm: this.currentTerm.toString(), votedFor: this.votedFor })),
      ),
    );
    this.termWrites = write.catch(() => {});
    await write;
  }

  /**
   * Saves a snapshot (atomically) and drops log entries up to `snapshot.index - retain`
   * (rewriting the log file atomically).
   */
  async saveSnapshot(snap: MetadataSnapshot, retain: number): Promise<void> {
    await writeAtomic(this.dir, SNAPSHOT_FILE, encodeSnapshot(snap));
    if (!this.snapshot || snap.index > this.snapshot.index) this.snapshot = snap;
    const upTo = snap.index - BigInt(retain);
    if (upTo > this.base) await this.compactTo(upTo < this.lastIndex ? upTo : this.lastIndex);
  }

  /**
   * Installs a snapshot received from the leader: the state up to snap.index. The
   * log keeps the entries after it when it holds snap.index with the same term, else
   * starts empty after it.
   */
  async installSnapshot(snap: MetadataSnapshot): Promise<void> {
    await writeAtomic(this.dir, SNAPSHOT_FILE, encodeSnapshot(snap));
    this.snapshot = snap;
    if (snap.index <= this.lastIndex && snap.index > this.base && this.termAt(snap.index) === snap.term) {
      await this.compactTo(snap.index);
      return;
    }
    this.entries = [];
    this.offsets = [];
    this.pending = null;
    this.base = snap.index;
    this.fileSize = 0;
    this.gen++;
    this.written = snap.index;
    this.durable = snap.index;
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) w.reject(new TruncatedError(w.index));
    const gen = this.gen;
    await this.enqueue(async () => {
      await this.replaceFile(Buffer.alloc(0));
      if (gen === this.gen) this.setDurable(snap.index);
    });
  }

  /** Drops entries up to `upTo` from memory and disk (rewrites the file with the rest). */
  private async compactTo(upTo: bigint): Promise<void> {
    if (upTo <= this.base) return;
    const k = Number(upTo - this.base);
    this.entries = this.entries.slice(k);
    this.base = upTo;
    const bufs = this.entries.map(encodeRecord);
    this.offsets = [];
    let pos = 0;
    for (const b of bufs) {
      this.offsets.push(pos);
      pos += b.length;
    }
    this.fileSize = pos;
    this.pending = null; // everything pending is in the rewrite
    const last = this.lastIndex;
    this.gen++;
    if (this.written > last) this.written = last;
    if (this.durable > last) this.durable = last;
    const content = Buffer.concat(bufs);
    const gen = this.gen;
    await this.enqueue(async () => {
      await this.replaceFile(content);
      if (gen === this.gen) {
        if (last > this.written) this.written = last;
        if (last > this.durable) this.setDurable(last);
      }
      this.kickSync();
    });
  }

  private async replaceFile(content: Buffer): Promise<void> {
    this.replacing = true;
    try {
      await this.syncing;
      await this.replaceFileNow(content);
    } finally {
      this.replacing = false;
    }
  }

  private async replaceFileNow(content: Buffer): Promise<void> {
    const tmp = path.join(this.dir, `${LOG_FILE}.tmp`);
    const fh = await open(tmp, 'w+');
    await fh.write(content, 0, content.length, 0);
    await fh.datasync();
    await rename(tmp, path.join(this.dir, LOG_FILE));
    await fsyncDir(this.dir);
    const old = this.fh;
    this.fh = fh;
    await old.close();
  }

  async close(): Promise<void> {
    this.flushPending();
    await this.io;
    await this.syncing;
    await this.fh.close().catch(() => {});
  }
}

async function readIfExists(p: string): Promise<Buffer | null> {
  try {
    return await readFile(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

async function exists(p: string): Promise<boolean> {
  return (await readIfExists(p)) !== null;
}

function withPath(err: unknown, file: string): Error {
  if (err instanceof LogCorruptError) {
    return new LogCorruptError(
      `${file}: ${err.message}. Refusing to start: move the data directory aside so this instance resyncs from its peers (only if the other instances are healthy)`,
    );
  }
  return err as Error;
}

export async function removeLogFiles(dir: string): Promise<void> {
  for (const f of [LOG_FILE, SNAPSHOT_FILE, TERM_FILE]) await rm(path.join(dir, f), { force: true });
}
