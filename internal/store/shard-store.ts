/**
 * The store's shard engine: erasure-coded shards of cold stripes
 * (docs/design/ec-tier.md) kept as needles in a second Store engine under
 * `<dataDir>/ec` — its own volumes, index and needle map — so placement-group
 * listings, digests and garbage collection of blob needles never see a shard
 * (shards belong to a group's EC members, not to the group their key hashes to).
 * Keys are internal/common/shard-key.ts's. The engine's rules hold: a shard is
 * acknowledged only once fsync'd, and reads verify the needle's CRC32C.
 */
import path from 'node:path';
import { shardKey } from '../common/shard-key.js';
import { Crc32c } from './crc32c.js';
import { InvalidArgumentError } from './errors.js';
import { Store, type StoreOpenOptions } from './store.js';
import type { BlobReader } from './store-read.js';

/** Where a written shard landed. */
export interface ShardWriteResult {
  volumeId: number;
  offset: number;
  /** False when an identical shard (same size and content) was already here. */
  written: boolean;
}

/** What WriteShard asks for. */
export interface ShardWrite {
  stripeId: string;
  index: number;
  /** Exact byte count of the shard. */
  size: number;
  /** CRC32C the encoder computed; other bytes commit nothing (InvalidArgumentError). */
  crc32c: number;
  /** Supersede a live shard holding other bytes (repair) instead of AlreadyExistsError. */
  replace: boolean;
}

/** A live shard (ListShards). */
export interface ShardListing {
  stripeId: string;
  index: number;
  size: number;
  writtenAtMs: number;
  /** Its needle key: the listing's page token. */
  key: string;
}

/** Shards held: count, bytes, and bytes per shard index. */
export interface ShardTotals {
  count: number;
  bytes: number;
  bytesByIndex: number[];
}

/** The shard key's parts, or undefined for a key not of shardKey's short form. */
export function parseShardKey(key: string): { stripeId: string; index: number } | undefined {
  const cut = key.indexOf('~');
  if (cut < 1) return undefined;
  const index = Number(key.slice(0, cut));
  const stripeId = key.slice(cut + 1);
  if (!Number.isInteger(index) || shardKey(stripeId, index) !== key) return undefined;
  return { stripeId, index };
}

/** Totals are recounted (a pass over the index files) at most this often, and only after a change. */
const TOTALS_EVERY_MS = 2_000;

export class ShardStore {
  private totalsCache: { at: number; value: ShardTotals } | undefined;
  private dirty = true;
  /** The recount under way: one at a time, so an older one never lands after a newer one. */
  private recounting: Promise<ShardTotals> | undefined;

  private constructor(readonly engine: Store) {}

  /** Opens (creating if needed) the shard engine in `<dataDir>/ec`, recovering from any crash. */
  static async open(o: StoreOpenOptions): Promise<ShardStore> {
    return new ShardStore(await Store.open({ ...o, dataDir: path.join(o.dataDir, 'ec') }));
  }

  /**
   * Writes one shard from `chunks` and makes it durable. A live shard with the same
   * key and identical bytes: nothing written (`written` false). Other bytes:
   * AlreadyExistsError. With `replace` (repair) a live shard that is not intact
   * (other size or CRC32C, or bytes failing it) gets a tombstone, then the new
   * shard (a crash between leaves no shard here, which repair treats as lost).
   */
  async write(w: ShardWrite, chunks: AsyncIterable<Uint8Array>): Promise<ShardWriteResult> {
    const key = shardKey(w.stripeId, w.index);
    if (w.replace && !(await this.intact(key, w))) await this.deleted(this.engine.delete(key));
    const writer = await this.engine.beginWrite(key, 0n, w.size);
    try {
      const crc = new Crc32c();
      for await (const chunk of chunks) {
        crc.update(chunk);
        await writer.write(chunk);
      }
      if (crc.digest() !== w.crc32c) {
        throw new InvalidArgumentError(
          `shard ${w.index} of stripe ${w.stripeId}: the bytes sent have CRC32C ${crc.digest()}, the header says ${w.crc32c}; nothing was stored`,
        );
      }
      const r = await writer.commit();
      this.dirty = true;
      return { volumeId: r.volumeId, offset: r.offset, written: !r.existed };
    } catch (err) {
      await writer.abort().catch(() => {});
      throw err;
    }
  }

  /** True when a live shard under `key` has the expected size and CRC32C and its bytes verify. */
  private async intact(key: string, w: ShardWrite): Promise<boolean> {
    try {
      const r = await this.engine.openRead(key);
      if (r.size !== w.size || r.crc32c !== w.crc32c) return false;
      for await (const _ of r.stream()) {
        // the stream verifies the needle's CRC32C as it reads
      }
      return true;
    } catch {
      return false; // absent, or damaged (ChecksumError)
    }
  }

  /** Opens shard `index` of `stripeId` for reading; NotFoundError when there is no live one. */
  openRead(stripeId: string, index: number): Promise<BlobReader> {
    return this.engine.openRead(shardKey(stripeId, index));
  }

  /** Appends a durable tombstone for the shard; true when it superseded a live one. */
  delete(stripeId: string, index: number): Promise<boolean> {
    return this.deleted(this.engine.delete(shardKey(stripeId, index)));
  }

  /**
   * Marks the totals dirty once `deleting` has landed, whatever its outcome. Marking before
   * it lands let a recount in between clear the mark and count the shard still there,
   * which stayed cached until the next change.
   */
  private async deleted<T>(deleting: Promise<T>): Promise<T> {
    try {
      return await deleting;
    } finally {
      this.dirty = true;
    }
  }

  /**
   * Live shards with a key after `afterKey`, in key order, at most `limit`. Keys of
   * another form (none today: stripe ids are at most 200 bytes) are skipped.
   */
  async list(afterKey: string | undefined, limit: number): Promise<ShardListing[]> {
    const out: ShardListing[] = [];
    for (const n of await this.engine.listNeedles(afterKey, limit)) {
      const k = parseShardKey(n.blobId);
      if (k) out.push({ ...k, size: n.size, writtenAtMs: n.writtenAtMs, key: n.blobId });
    }
    return out;
  }

  /**
   * Shards held (for heartbeats and metrics): recounted from the index files
   * after a write or delete, at most every TOTALS_EVERY_MS; cached otherwise.
   */
  async totals(now = performance.now()): Promise<ShardTotals> {
    const c = this.totalsCache;
    if (c && (!this.dirty || now - c.at < TOTALS_EVERY_MS)) return c.value;
    // Concurrent recounts (a heartbeat and a metrics scrape) used to land in any order:
    // an older one landing last left a stale count cached until the next change.
    this.recounting ??= this.recount(now).finally(() => {
      this.recounting = undefined;
    });
    return this.recounting;
  }

  private async recount(now: number): Promise<ShardTotals> {
    // Cleared before reading: a change during the pass marks it dirty again.
    this.dirty = false;
    const value: ShardTotals = { count: 0, bytes: 0, bytesByIndex: [] };
    let after: string | undefined;
    for (;;) {
      const page = await this.engine.listNeedles(after, 1000).catch((err: unknown) => {
        this.dirty = true; // not counted: the next call tries again
        throw err;
      });
      for (const n of page) {
        const k = parseShardKey(n.blobId);
        if (!k) continue;
        value.count++;
        value.bytes += n.size;
        while (value.bytesByIndex.length <= k.index) value.bytesByIndex.push(0);
        value.bytesByIndex[k.index] = (value.bytesByIndex[k.index] ?? 0) + n.size;
      }
      if (page.length < 1000) break;
      after = page[page.length - 1]?.blobId;
    }
    this.totalsCache = { at: now, value };
    return value;
  }

  close(): Promise<void> {
    return this.engine.close();
  }
}
