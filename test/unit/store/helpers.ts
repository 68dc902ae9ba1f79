import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach } from 'vitest';
import { Store, type StoreOpenOptions } from '../../../internal/store/store.js';

const dirs: string[] = [];
const stores: Store[] = [];

afterEach(async () => {
  for (const s of stores.splice(0)) await s.close().catch(() => {});
  for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
});

export async function tempDir(): Promise<string> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), 'haystack-store-'));
  dirs.push(d);
  return d;
}

export async function openStore(dataDir: string, opts: Partial<StoreOpenOptions> = {}): Promise<Store> {
  const s = await Store.open({ dataDir, maxVolumeSize: 1 << 20, compactionThreshold: 0.6, ...opts });
  stores.push(s);
  return s;
}

export function blob(n: number, seed = 0): Uint8Array {
  const b = new Uint8Array(n);
  let x = (seed * 2654435761 + 12345) >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

export function sha256(b: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(b).digest());
}

export function rand(n: number): Uint8Array {
  return new Uint8Array(randomBytes(n));
}

/**
 * Writes a blob in chunks of `chunk` bytes. `replica` is kept for readability
 * of older tests: every write may now supersede a tombstone.
 */
export async function put(
  s: Store,
  id: string,
  data: Uint8Array,
  opts: {
    cookie?: bigint;
    chunk?: number;
    sha?: Uint8Array;
    replica?: boolean;
    contentType?: string;
    fileName?: string;
    stamp?: number;
    keepStamp?: boolean;
  } = {},
) {
  const w = await s.beginWrite(id, opts.cookie ?? 42n, data.length, {
    ...(opts.stamp !== undefined ? { stamp: opts.stamp } : {}),
    ...(opts.keepStamp ? { keepStamp: true } : {}),
    ...(opts.contentType !== undefined ? { contentType: opts.contentType } : {}),
    ...(opts.fileName !== undefined ? { fileName: opts.fileName } : {}),
  });
  const step = opts.chunk ?? 7919;
  for (let i = 0; i < data.length; i += step)
    await w.write(data.subarray(i, Math.min(data.length, i + step)));
  return w.commit(opts.sha);
}

export async function get(
  s: Store,
  id: string,
  cookie?: bigint,
  offset?: number,
  length?: number,
): Promise<Uint8Array> {
  const r = await s.openRead(id, cookie);
  const parts: Uint8Array[] = [];
  for await (const c of r.stream(offset, length, 4096)) parts.push(c);
  return Buffer.concat(parts);
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}
