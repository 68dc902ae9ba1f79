import { randomBytes } from 'node:crypto';
import type { ConnectionOptions } from 'node:tls';
import type { ChainableCommander, Redis } from 'ioredis';
import { newRedisClient } from '../common/redis-client.js';
import type { Logger } from '../server/logger.js';
import {
  type BlobCache,
  type CacheCounts,
  type CachedBlob,
  type CachedBlobMeta,
  type CacheFill,
  type CacheObserver,
  type CacheStatsSnapshot,
  CacheUnreachableError,
  type FillDropReason,
  type FillLease,
  type WriteLease,
} from './blob-cache.js';
import { MAC_BYTES, sealInPlace, unseal } from './integrity.js';
import {
  type CacheCommands,
  LEASE_GRANTED,
  LEASE_REFUSED_EPOCH,
  LEASE_REFUSED_HELD,
  LEASE_REFUSED_INDEX,
  LEASE_REFUSED_TOMBSTONE,
  SET_REFUSED_EPOCH,
  SET_REFUSED_LEASE,
  withCacheScripts,
} from './redis-cache-scripts.js';

export interface RedisCacheOptions {
  url: string;
  /** TLS for a rediss:// URL (security/redis-tls.ts); none for redis://. */
  tls?: ConnectionOptions | undefined;
  ttlMs: number;
  maxBlobSize: number;
  log: Logger;
  /** Key prefix (default "haystack:"). */
  prefix?: string;
  /** HMAC key of every entry (integrity.ts); gateways sharing the cache share it, Redis never sees it. */
  integrityKey: Buffer;
  /**
   * Longest a cache command may take before the read or write goes on without it (a
   * get is then a miss; default 500 ms). A connection silent for twice that (at least
   * a second) with a command outstanding is dropped: until it is dialled again every
   * call bypasses the cache at once.
   */
  commandTimeoutMs?: number;
  /** At most one "cache unavailable" warning per this interval. */
  warnIntervalMs?: number;
  /** How long a deletion refuses fill leases of the same id (not what orders fills: the lease is). */
  tombstoneMs?: number;
  /** Longest a fill lease lasts unused (liveness only: an expired lease just does not fill). */
  leaseMs?: number;
  /** How often this process adds its hit/miss counts to the shared counters. */
  statsFlushMs?: number;
  /**
   * The directory leader's commit index (at or above every acknowledged delete's): what
   * restores the shared commit index when the cache lost it. Rejects when it is unknown.
   */
  leaderCommitIndex: () => Promise<bigint>;
  observe?: CacheObserver;
}

/** Largest number of ids whose invalidation is remembered while Redis is away. */
const MAX_PENDING_INVALIDATIONS = 10_000;
/** Least time between two restores of a missing commit index (each asks the directory). */
const RESTORE_INTERVAL_MS = 1_000;

/**
 * The blob cache on Redis (shared by every gateway). Each value is a 4-byte
 * header length, a JSON header with the metadata, then the content. While Redis
 * is unreachable every call bypasses it at once (no queueing) and one warning is
 * logged per interval, except invalidate, which rejects (the delete is then not
 * acknowledged and its retry tells the cache). Such deletions are also remembered
 * and replayed when Redis is back, at best effort, for a client that never retries.
 * Every command a call sends is bounded by the command timeout, so no call hangs
 * when Redis is stalled or cut off: a get that times out is a miss.
 */
export class RedisBlobCache implements BlobCache {
  readonly backend = 'redis' as const;
  readonly maxBlobSize: number;
  private readonly redis: Redis & CacheCommands;
  private commitIndex = 0n;
  /** The cache's epoch as last learned (BlobCache.set); undefined until (re)learned. */
  private epoch: string | undefined;
  /** Bumped on every learn: fills under a lease granted in an earlier generation are dropped. */
  private generation = 0;
  /** The learn under way, and the connection it was asked on. */
  private learning: { connection: number; done: Promise<void> } | undefined;
  /** Bumped on every lost connection: a learn answered before it is not the current epoch. */
  private connection = 0;
  private readonly prefix: string;
  private readonly log: Logger;
  private readonly counts: CacheCounts = { hits: 0, misses: 0 };
  private readonly unflushed: CacheCounts = { hits: 0, misses: 0 };
  private cluster: CacheCounts = { hits: 0, misses: 0 };
  /** Ids of deletes answered UNAVAILABLE because the cache was not told: replayed on reconnection. */
  private readonly pendingInvalidations = new Set<string>();
  /** The restore of a missing commit index under way, and when the last one began. */
  private restoring: Promise<void> | undefined;
  private lastRestoreAt = 0;
  /** The retry of a restore the leader did not answer; one warning per outage, not per retry. */
  private restoreRetry: NodeJS.Timeout | undefined;
  private restoreFailing = false;
  /** The cache's address for messages (no credentials). */
  private readonly where: string;
  private flushAllOnReconnect = false;
  private lastWarnAt = 0;
  private suppressed = 0;
  private wasDown = false;
  private readonly flushTimer: NodeJS.Timeout;
  private closed = false;

  constructor(private readonly opts: RedisCacheOptions) {
    this.maxBlobSize = opts.maxBlobSize;
    this.prefix = opts.prefix ?? 'haystack:';
    this.log = opts.log;
    this.where = redisAddress(opts.url);
    const commandTimeout = opts.commandTimeoutMs ?? 500;
    const redis = newRedisClient(opts.url, {
      ...(opts.tls ? { tls: opts.tls } : {}),
      // Fail fast while disconnected: a read must not wait for the cache.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout,
      // A stalled Redis or a half-open socket (peer gone without FIN/RST) would otherwise
      // stay "ready" and cost every read the command timeout until the kernel gives up
      // (many minutes). Longer than the command timeout: a slow answer is a miss, not a
      // dropped connection (which forgets the epoch, so fills wait for it).
      socketTimeout: Math.max(2 * commandTimeout, 1_000),
      connectTimeout: 2_000,
      // Reconnect forever, at most every 2 s: caching resumes by itself.
      retryStrategy: (times) => Math.min(100 * times, 2_000),
      lazyConnect: false,
    });
    this.redis = withCacheScripts(redis);
    this.redis.on('error', (err: Error) => this.unavailable(err));
    this.redis.on('close', () => {
      // Whatever Redis answers next may have lost its state: no fill until the epoch is re-learned.
      this.connection++;
      this.forgetEpoch();
      if (!this.closed) this.unavailable(new Error('connection closed'));
    });
    this.redis.on('ready', () => void this.onReady());
    this.flushTimer = setInterval(() => void this.flushStats(), opts.statsFlushMs ?? 1_000);
    this.flushTimer.unref();
  }

  private key(blobId: string): string {
    return `${this.prefix}blob:${blobId}`;
  }
  private tombKey(blobId: string): string {
    return `${this.prefix}deleted:${blobId}`;
  }
  private leaseKey(blobId: string): string {
    return `${this.prefix}lease:${blobId}`;
  }
  private get statsKey(): string {
    return `${this.prefix}cache-stats`;
  }
  private get indexKey(): string {
    return `${this.prefix}commit-index`;
  }
  private get indexFloorKey(): string {
    return `${this.prefix}commit-index-floor`;
  }
  private get epochKey(): string {
    return `${this.prefix}cache:epoch`;
  }

  private forgetEpoch(): void {
    this.epoch = undefined;
  }

  /** Learns the cache's epoch (creating a random one when missing); one at a time per connection. */
  private learnEpoch(): Promise<void> {
    const connection = this.connection;
    if (this.learning?.connection !== connection) {
      const done = this.askEpoch(connection).finally(() => {
        if (this.learning?.done === done) this.learning = undefined;
      });
      this.learning = { connection, done };
    }
    return this.learning.done;
  }

  private async askEpoch(connection: number): Promise<void> {
    try {
      const [epoch, indexThere] = await this.redis.hsLearnEpoch(
        this.epochKey,
        this.indexKey,
        randomBytes(16).toString('hex'),
      );
      if (connection === this.connection) {
        this.epoch = epoch;
        this.generation++;
      }
      // The cache lost its state (or was never used): leases wait for the restored index.
      if (indexThere !== 1) void this.restoreIndex();
    } catch (err) {
      this.unavailable(err);
    }
  }

  private dropFill(reason: FillDropReason): void {
    this.opts.observe?.('fill_dropped', reason);
  }

  /** Raises the shared commit index as last seen to `index` (a Redis value, or nothing). */
  private sawIndex(index: string | null | undefined): void {
    if (index && /^\d+$/.test(index) && BigInt(index) > this.commitIndex) this.commitIndex = BigInt(index);
  }

  sharedCommitIndex(): bigint {
    return this.commitIndex;
  }

  async publishCommitIndex(index: bigint): Promise<void> {
    if (index > this.commitIndex) this.commitIndex = index;
    if (!this.available()) return;
    try {
      await this.redis.hsRaiseIndex(this.indexKey, this.indexFloorKey, index.toString());
    } catch (err) {
      this.unavailable(err);
    }
  }

  available(): boolean {
    return this.redis.status === 'ready';
  }

  /**
   * Puts back a missing shared commit index: the directory leader's (at or above every
   * acknowledged delete's), or higher. At most one at a time, one per RESTORE_INTERVAL_MS.
   */
  private restoreIndex(): Promise<void> {
    if (this.restoring) return this.restoring;
    if (Date.now() - this.lastRestoreAt < RESTORE_INTERVAL_MS) {
      this.retryRestore(); // asked too soon after the last one: still done, a little later
      return Promise.resolve();
    }
    this.lastRestoreAt = Date.now();
    const done = this.askRestore().finally(() => {
      if (this.restoring === done) this.restoring = undefined;
    });
    this.restoring = done;
    return done;
  }

  private async askRestore(): Promise<void> {
    // The epoch this restore is for: the leader's index read below orders nothing in a
    // cache that lost its state again before the restore lands (RESTORE_INDEX checks).
    const held = this.epoch;
    if (held === undefined) return; // learning the epoch restores once it knows it
    let index: bigint;
    try {
      index = await this.opts.leaderCommitIndex();
    } catch (err) {
      if (!this.restoreFailing)
        this.log.warn(
          { err: err instanceof Error ? err.message : String(err) },
          'cannot restore the cache commit index (the directory leader did not answer): no read fills the cache until it is; retrying every second',
        );
      this.restoreFailing = true;
      this.retryRestore();
      return;
    }
    this.restoreFailing = false;
    if (this.commitIndex > index) index = this.commitIndex;
    try {
      const restored = await this.redis.hsRestoreIndex(
        this.indexKey,
        this.indexFloorKey,
        this.epochKey,
        index.toString(),
        held,
      );
      if (restored === '') {
        this.epochRefused(held);
        return;
      }
      this.sawIndex(restored);
      this.log.info({ index: restored }, 'cache commit index restored: fills resume');
    } catch (err) {
      this.unavailable(err);
    }
  }

  /** Tries the restore again in RESTORE_INTERVAL_MS, without waiting for a fill to ask. */
  private retryRestore(): void {
    if (this.closed || this.restoreRetry) return;
    this.restoreRetry = setTimeout(() => {
      this.restoreRetry = undefined;
      if (!this.closed && this.epoch !== undefined) void this.restoreIndex();
    }, RESTORE_INTERVAL_MS + 50); // past restoreIndex's own once-a-second gate
    this.restoreRetry.unref();
  }

  /** Logs at most one warning per interval while Redis is unreachable. */
  private unavailable(err: unknown): void {
    this.wasDown = true;
    const now = Date.now();
    if (now - this.lastWarnAt < (this.opts.warnIntervalMs ?? 30_000)) {
      this.suppressed++;
      return;
    }
    this.log.warn(
      { err: err instanceof Error ? err.message : String(err), suppressed: this.suppressed },
      'redis cache unavailable: reads and writes bypass the cache',
    );
    this.lastWarnAt = now;
    this.suppressed = 0;
  }

  private async onReady(): Promise<void> {
    if (this.wasDown) this.log.info('redis cache available again: caching resumes');
    this.wasDown = false;
    this.lastWarnAt = 0;
    try {
      await this.learnEpoch();
      if (this.flushAllOnReconnect) {
        await this.dropAllBlobs();
        this.flushAllOnReconnect = false;
        this.pendingInvalidations.clear();
      }
      for (const id of [...this.pendingInvalidations]) {
        await this.writeInvalidation(id);
        this.pendingInvalidations.delete(id);
      }
    } catch (err) {
      this.unavailable(err);
    }
  }

  /** Too many deletions were missed: drop every cached blob rather than serve a stale one. */
  private async dropAllBlobs(): Promise<void> {
    // Leases first: a read that began before one of those deletions must not fill once its
    // entry is dropped (blobs first left it a window between the two passes).
    for (const pattern of [`${this.prefix}lease:*`, `${this.prefix}blob:*`]) {
      let cursor = '0';
      do {
        const [next, keys] = await this.redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
        if (keys.length > 0) await this.redis.del(...keys);
        cursor = next;
      } while (cursor !== '0');
    }
    this.log.warn('dropped every cached blob after missing deletions during a Redis outage');
  }

  private record(hit: boolean): void {
    if (hit) {
      this.counts.hits++;
      this.unflushed.hits++;
    } else {
      this.counts.misses++;
      this.unflushed.misses++;
    }
    this.opts.observe?.(hit ? 'hit' : 'miss');
  }

  async get(blobId: string): Promise<CachedBlob | undefined> {
    if (!this.available()) {
      this.record(false);
      return undefined;
    }
    try {
      // One round trip, one atomic command: the entry and the shared commit index (MGET, not
      // MULTI/GET/GET/EXEC: a third of the commands and of ioredis's per-read work).
      const [value, indexBuf] = await this.redis.mgetBuffer(this.key(blobId), this.indexKey);
      this.sawIndex(indexBuf?.toString('latin1'));
      const body = value ? unseal(this.opts.integrityKey, this.key(blobId), value) : undefined;
      if (body === 'forged') {
        // Planted or corrupted in Redis: a miss (the read goes to the stores), never served.
        this.opts.observe?.('integrity_failure');
        this.log.warn({ blobId }, 'cache entry failed its integrity check: ignored');
      }
      const blob = body && body !== 'forged' ? decode(body) : undefined;
      this.record(blob !== undefined && blob.meta.blobId === blobId);
      return blob?.meta.blobId === blobId ? blob : undefined;
    } catch (err) {
      this.unavailable(err);
      this.record(false);
      return undefined;
    }
  }

  /** A new lease's token with the epoch it is asked under, or why none can be asked for now. */
  private leaseRequest(
    blobId: string,
  ): { held: string; generation: number; token: string } | { refusal: FillLease } {
    if (!this.available()) return { refusal: { blobId } };
    const held = this.epoch;
    if (held === undefined) {
      void this.learnEpoch();
      return { refusal: { blobId, refused: 'before_epoch' } };
    }
    // Captured before asking: a learn landing meanwhile makes this lease an earlier generation's.
    return { held, generation: this.generation, token: randomBytes(16).toString('hex') };
  }

  async lease(blobId: string): Promise<FillLease> {
    const req = this.leaseRequest(blobId);
    if ('refusal' in req) return req.refusal;
    const { held, generation, token } = req;
    try {
      const [answer, index] = await this.redis.hsTakeLease(
        this.key(blobId),
        this.tombKey(blobId),
        this.leaseKey(blobId),
        this.epochKey,
        this.indexKey,
        token,
        this.opts.leaseMs ?? 10_000,
        held,
      );
      this.sawIndex(index);
      switch (answer) {
        case LEASE_GRANTED:
          return { blobId, token, generation };
        case LEASE_REFUSED_HELD:
          return { blobId, refused: 'lease_held' };
        case LEASE_REFUSED_TOMBSTONE:
          return { blobId, refused: 'tombstone' };
        case LEASE_REFUSED_EPOCH:
          this.epochRefused(held);
          return { blobId, refused: 'epoch_changed' };
        case LEASE_REFUSED_INDEX:
          void this.restoreIndex();
          return { blobId, refused: 'index_missing' };
        default:
          return { blobId }; // LEASE_CACHED: filled since the miss
      }
    } catch (err) {
      this.unavailable(err);
      return { blobId };
    }
  }

  async writeLease(blobId: string): Promise<WriteLease> {
    const req = this.leaseRequest(blobId);
    if ('refusal' in req) return req.refusal;
    const { held, generation, token } = req;
    try {
      const answer = await this.redis.hsTakeWriteLease(
        this.leaseKey(blobId),
        this.epochKey,
        token,
        this.opts.leaseMs ?? 10_000,
        held,
      );
      if (answer === LEASE_GRANTED) return { blobId, token, generation };
      this.epochRefused(held);
      return { blobId, refused: 'epoch_changed' };
    } catch (err) {
      // Timed out or failed: the SET may still land, but unconfirmed it orders nothing, so no push.
      this.unavailable(err);
      return { blobId };
    }
  }

  async release(lease: FillLease): Promise<void> {
    if (lease.token === undefined || !this.available()) return;
    try {
      await this.redis.hsReleaseLease(this.leaseKey(lease.blobId), lease.token);
    } catch (err) {
      this.unavailable(err);
    }
  }

  /** The cache lost its state (or its epoch) since `held` was learned: re-learn it. */
  private epochRefused(held: string | undefined): void {
    if (this.epoch !== held) return;
    this.forgetEpoch();
    void this.learnEpoch();
  }

  async set(blob: CachedBlob, how: CacheFill): Promise<void> {
    const id = blob.meta.blobId;
    if (blob.data.length > this.maxBlobSize || blob.data.length !== blob.meta.size) return;
    if (!this.available()) return;
    const lease = 'push' in how ? how.push : how.lease;
    const lost: FillDropReason = 'push' in how ? 'write_lease_lost' : 'lease_lost';
    if (lease.token === undefined) {
      if (lease.refused) this.dropFill(lease.refused);
      return;
    }
    if (lease.blobId !== id) return this.dropFill(lost);
    // Granted before this process (re)learned the epoch: the cache may have lost the
    // delete that revoked it (a failover to a replica missing it) while keeping the lease.
    const held = this.epoch;
    if (held === undefined || lease.generation !== this.generation) {
      this.dropFill('before_epoch');
      void this.release(lease); // so later reads of the id need not wait for it to expire
      if (held === undefined) void this.learnEpoch();
      return;
    }
    try {
      const r = await this.redis.hsSetBlob(
        this.key(id),
        this.tombKey(id),
        this.epochKey,
        this.leaseKey(id),
        encodeSealed(this.opts.integrityKey, this.key(id), blob),
        this.opts.ttlMs,
        held,
        lease.token,
      );
      if (r === SET_REFUSED_LEASE) this.dropFill(lost);
      if (r === SET_REFUSED_EPOCH) {
        this.dropFill('epoch_changed');
        void this.release(lease);
        this.epochRefused(held);
      }
    } catch (err) {
      this.unavailable(err);
    }
  }

  async invalidate(blobId: string): Promise<void> {
    let why = 'not connected';
    if (this.available()) {
      try {
        await this.writeInvalidation(blobId);
        return;
      } catch (err) {
        this.unavailable(err);
        why = err instanceof Error ? err.message : String(err);
      }
    }
    // Replayed once Redis is back (best effort: the delete's retry is what counts); a flood
    // of them drops the whole cache instead.
    if (this.pendingInvalidations.size < MAX_PENDING_INVALIDATIONS) this.pendingInvalidations.add(blobId);
    else this.flushAllOnReconnect = true;
    throw new CacheUnreachableError(this.where, why);
  }

  private async writeInvalidation(blobId: string): Promise<void> {
    // One transaction: the lease goes with the entry, so no fill of a read begun before lands;
    // and the delete's commit index (publishCommitIndex ran first) is raised with it.
    // defineCommand adds the scripts to transactions too; ioredis's types do not say so.
    const multi = this.redis.multi() as ChainableCommander & {
      hsRaiseIndex(key: string, floorKey: string, index: string): ChainableCommander;
    };
    multi.del(this.key(blobId), this.leaseKey(blobId));
    multi.set(this.tombKey(blobId), '1', 'PX', this.opts.tombstoneMs ?? 60_000);
    multi.hsRaiseIndex(this.indexKey, this.indexFloorKey, this.commitIndex.toString());
    const res = await multi.exec();
    const failed = res === null ? new Error('transaction discarded') : res.find(([err]) => err)?.[0];
    if (failed) throw failed;
  }

  private async flushStats(): Promise<void> {
    if (!this.available()) return;
    const { hits, misses } = this.unflushed;
    try {
      const multi = this.redis.multi();
      if (hits > 0) multi.hincrby(this.statsKey, 'hits', hits);
      if (misses > 0) multi.hincrby(this.statsKey, 'misses', misses);
      multi.hgetall(this.statsKey);
      const res = await multi.exec();
      this.unflushed.hits -= hits;
      this.unflushed.misses -= misses;
      const all = res?.[res.length - 1]?.[1] as Record<string, string> | undefined;
      if (all) this.cluster = { hits: Number(all.hits ?? 0), misses: Number(all.misses ?? 0) };
    } catch (err) {
      this.unavailable(err);
    }
  }

  async stats(): Promise<CacheStatsSnapshot> {
    await this.flushStats();
    return {
      backend: 'redis',
      available: this.available(),
      local: { ...this.counts },
      // What Redis last said plus what this process has not handed over yet.
      cluster: {
        hits: this.cluster.hits + this.unflushed.hits,
        misses: this.cluster.misses + this.unflushed.misses,
      },
    };
  }

  async close(): Promise<void> {
    clearInterval(this.flushTimer);
    clearTimeout(this.restoreRetry);
    await this.flushStats();
    this.closed = true;
    this.redis.disconnect();
  }
}

/** host:port of a redis:// URL (never its credentials), or "Redis" when it does not parse. */
function redisAddress(url: string): string {
  try {
    return new URL(url).host || 'Redis';
  } catch {
    return 'Redis';
  }
}

interface Header {
  v: 1;
  id: string;
  size: number;
  sha256: string;
  ct: string;
  at: number;
  cookie: string;
  rc: number;
  trc: number;
  /** File name; absent when none (entries written before it existed too). */
  fn?: string;
}

export function encode(blob: CachedBlob): Buffer {
  return encodeInto(blob, 0);
}

/**
 * `seal(key, redisKey, encode(blob))` built in one buffer: the blob's bytes are
 * copied once, not three times (concat into the entry, concat with the MAC):
 * each 64 KiB copy is a fresh allocation, ~50 µs of CPU on the dev box, paid on
 * every write and every read-through fill.
 */
export function encodeSealed(key: Buffer, redisKey: string, blob: CachedBlob): Buffer {
  const buf = encodeInto(blob, MAC_BYTES);
  return sealInPlace(key, redisKey, buf, buf.length - MAC_BYTES);
}

/** The entry's bytes (length, JSON header, data) with `spare` uninitialised bytes after them. */
function encodeInto(blob: CachedBlob, spare: number): Buffer {
  const m = blob.meta;
  const header: Header = {
    v: 1,
    id: m.blobId,
    size: m.size,
    sha256: m.sha256,
    ct: m.contentType,
    at: m.createdAtMs,
    cookie: m.cookie.toString(),
    rc: m.replicaCount,
    trc: m.targetReplicaCount,
    ...(m.fileName ? { fn: m.fileName } : {}),
  };
  const h = Buffer.from(JSON.stringify(header));
  const out = Buffer.allocUnsafe(4 + h.length + blob.data.length + spare);
  out.writeUInt32BE(h.length, 0);
  h.copy(out, 4);
  out.set(blob.data, 4 + h.length);
  return out;
}

/** Undefined for anything that is not a well-formed entry (treated as a miss). */
export function decode(value: Buffer): CachedBlob | undefined {
  if (value.length < 4) return undefined;
  const n = value.readUInt32BE(0);
  if (4 + n > value.length) return undefined;
  let h: Header;
  try {
    h = JSON.parse(value.subarray(4, 4 + n).toString('utf8')) as Header;
  } catch {
    return undefined;
  }
  const data = value.subarray(4 + n);
  if (h.v !== 1 || data.length !== h.size) return undefined;
  const meta: CachedBlobMeta = {
    blobId: h.id,
    size: h.size,
    sha256: h.sha256,
    contentType: h.ct,
    createdAtMs: h.at,
    cookie: BigInt(h.cookie),
    replicaCount: h.rc,
    targetReplicaCount: h.trc,
    ...(typeof h.fn === 'string' ? { fileName: h.fn } : {}),
  };
  return { meta, data };
}
