import { read as readCb, write as writeCb, writev as writevCb } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';

export { fsyncDir } from '../common/atomic-file.js';

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

/** Positioned write of all of `buf` (loops on short writes). */
export async function writeFully(h: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
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

/**
 * Positioned write of `bufs` one after another from `position`, in one
 * `pwritev` (one threadpool round trip; libuv splits at IOV_MAX): pieces the
 * caller already holds are written without being copied into one buffer first.
 * Loops on short writes with what is left.
 */
export async function writevFully(
  h: FileHandle,
  bufs: readonly Uint8Array[],
  position: number,
): Promise<void> {
  let rest = bufs.filter((b) => b.length > 0);
  let at = position;
  while (rest.length > 0) {
    const pending = rest;
    let n = await new Promise<number>((resolve, reject) => {
      writevCb(h.fd, pending, at, (err, written) => (err ? reject(err) : resolve(written)));
    });
    if (n <= 0) throw new Error(`writev returned ${n}`);
    at += n;
    // Drop what was written: whole buffers, then the written front of the next one.
    let i = 0;
    while (i < rest.length && n >= rest[i]!.length) n -= rest[i++]!.length;
    rest = rest.slice(i);
    if (n > 0) rest[0] = rest[0]!.subarray(n);
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
