/**
 * Deletes: a durable tombstone needle (format v1, DELETED, size 0) for a blob.
 *
 * - Without a stamp (a client delete): the tombstone is stamped now (above the
 *   needle it supersedes); an unknown or already deleted id writes nothing and
 *   returns false.
 * - With a stamp (copying a tombstone another replica of the placement group
 *   holds: backfill, anti-entropy): a needle here with a NEWER stamp is kept
 *   (false); otherwise a tombstone with exactly that stamp is written — over a
 *   live needle (true), over an older tombstone or where the id is unknown
 *   (false), so replicas converge on the same newest record. An equal-stamp
 *   live needle is replaced (a tombstone wins a stamp tie, as on load); an
 *   equal-stamp tombstone is already there (false, nothing written).
 */
import { InvalidArgumentError, isNoSpaceError, ResourceExhaustedError } from './errors.js';
import type { IndexRecord } from './index-file.js';
import { encodeNeedle, FLAG_DELETED } from './needle.js';
import { MAX_STAMP } from './needle-map.js';
import { ioError, type StoreCore } from './store-core.js';
import type { Volume } from './volume.js';

export interface DeleteOptions {
  /** Stamp of the tombstone being copied (ms since the epoch, 1 .. 2^48-1). */
  stamp?: number;
}

/** Appends a durable tombstone; true when it superseded a live needle (see the module rules). */
export async function deleteNeedle(core: StoreCore, blobId: string, o: DeleteOptions = {}): Promise<boolean> {
  core.checkOpen();
  core.checkId(blobId);
  const given = o.stamp;
  if (given !== undefined && !(Number.isSafeInteger(given) && given >= 1 && given <= MAX_STAMP)) {
    throw new InvalidArgumentError(`stamp ${given} is outside 1..${MAX_STAMP} ms`);
  }
  const release = await core.locks.acquire(blobId);
  try {
    const r = await core.resolve(blobId);
    r?.file.release();
    const current = r?.header.writtenAtMs;
    let stamp: number;
    if (given === undefined) {
      if (!r || r.loc.deleted) return false;
      stamp = core.stampFor(blobId, current);
    } else {
      if (r && current !== undefined && (current > given || (current === given && r.loc.deleted)))
        return false;
      // Exactly the given stamp, unless a failed record of the key might come back above it.
      stamp = Math.max(given, (core.failedStamp(blobId) ?? -1) + 1);
    }
    const cookie = r?.header.cookie ?? 0n;
    // Header and index record carry the same stamp (the load order compares them).
    const tomb = encodeNeedle(
      { key: blobId, cookie, flags: FLAG_DELETED, writtenAtMs: stamp },
      new Uint8Array(0),
    );
    const { vol, offset } = await reserveTombstoneSpace(core, tomb.length, r?.vol);
    try {
      await vol.writeDat(tomb, offset);
      const record: IndexRecord = {
        key: blobId,
        flags: FLAG_DELETED,
        offset,
        dataSize: 0,
        cookie,
        writtenAtMs: stamp,
      };
      await vol.committer.submit({
        record,
        onDurable: () =>
          core.publish(vol, blobId, { volumeId: vol.id, offset, length: tomb.length, deleted: true, stamp }),
      });
    } catch (err) {
      core.commitFailed(blobId, stamp);
      if (!isNoSpaceError(err)) vol.markBroken(`tombstone write failed: ${(err as Error).message}`);
      throw ioError(err, `deleting blob ${blobId}`);
    } finally {
      vol.finish();
    }
    return r !== undefined && !r.loc.deleted;
  } finally {
    release();
  }
}

/**
 * Room for a tombstone: a writable volume as usual, else (every volume full and
 * the volume limit reached) the deleted needle's own volume, so deletes and then
 * compaction can free space on a full store.
 */
async function reserveTombstoneSpace(
  core: StoreCore,
  length: number,
  own: Volume | undefined,
): Promise<{ vol: Volume; offset: number }> {
  try {
    return await core.reserveSpace(length);
  } catch (err) {
    if (!(err instanceof ResourceExhaustedError) || !own) throw err;
    const offset = own.reserveTombstone(length);
    if (offset === null) throw err;
    return { vol: own, offset };
  }
}
