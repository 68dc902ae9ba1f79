import { read as readCb, write as writeCb, writeSync } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';

/** fsync a directory so renames/creates/unlinks in it are durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const h = await fs.open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/*
 * Positioned I/O goes through the callback API on the handle's fd: FileHandle.read
 * and .write cost several times more JS per call (ref counting, promise plumbing),
 * which showed as 18% of a store's CPU on 64 KiB reads. Callers hold the volume
 * file's reference (acquire/release), so the fd cannot be closed meanwhile.
 */
type PositionedOp = (
  fd: number,
  buf: Uint8Array,
  offset: number,
  length: number,
  position: number,
  cb: (err: NodeJS.ErrnoException | null, n: number) => void,
) => void;

function positioned(
  op: PositionedOp,
  fd: number,
  buf: Uint8Array,
  offset: number,
  length: number,
  position: number,
): Promise<number> {
  return new Promise((resolve, reject) => {
    op(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

/**
 * Writes of at most this many bytes (64 KiB) go through `writeSync` on the event
 * loop thread: a buffered write into the page cache takes 2 µs of CPU for 1 KiB
 * and 14 µs for 64 KiB that way, against 25 µs and 96 µs as a libuv threadpool
 * round trip (futex wake, worker switch, eventfd, callback, promise), measured
 * on the 2-core dev box (docs/benchmarks.md, "Where the time goes"). A write
 * only reaches the disk at the fdatasync, which stays asynchronous; the page
 * cache stays small because every write is fsync'd within a group commit, so
 * dirty-page throttling does not stall the loop here.
 */
export const SYNC_WRITE_MAX = 64 * 1024;

/** Positioned write of all of `buf` (loops on short writes). */
export async function writeFully(h: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  if (buf.length <= SYNC_WRITE_MAX) {
    while (done < buf.length) {
      const bytesWritten = writeSync(h.fd, buf, done, buf.length - done, position + done);
      if (bytesWritten <= 0) throw new Error(`write returned ${bytesWritten}`);
      done += bytesWritten;
    }
    return;
  }
  while (done < buf.length) {
    const bytesWritten = await positioned(
      writeCb as PositionedOp,
      h.fd,
      buf,
      done,
      buf.length - done,
      position + done,
    );
    if (bytesWritten <= 0) throw new Error(`write returned ${bytesWritten}`);
    done += bytesWritten;
  }
}

/** Positioned read filling `buf` as far as the file allows; returns bytes read. */
export async function readFully(
  h: FileHandle,
  buf: Uint8Array,
  position: number,
  length = buf.length,
): Promise<number> {
  let done = 0;
  while (done < length) {
    const bytesRead = await positioned(
      readCb as PositionedOp,
      h.fd,
      buf,
      done,
      length - done,
      position + done,
    );
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

export async function exists(path: string): Promise<boolean> {
  try {
    await fs.access(path);
    return true;
  } catch {
    return false;
  }
}

export async function unlinkIfExists(path: string): Promise<void> {
  try {
    await fs.unlink(path);
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOENT') throw err;
  }
}
