import { createHash } from 'node:crypto';
import { Code, ConnectError } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { BlobLocation } from '../../gen/haystack/v1/directory_pb.js';
import type { DirectoryClient } from '../../internal/directory/client.js';
import { type HaystackClient, NotFoundError } from '../../internal/sdk/index.js';
import { readBlob, type StoreClient, storeClient } from '../helpers/store-client.js';

export const sha256hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const clients = new Map<string, StoreClient>();
/** One client (one HTTP/2 connection) per store address: thousands of checks must not open thousands of sockets. */
export function store(address: string): StoreClient {
  let c = clients.get(address);
  if (!c) {
    c = storeClient(address);
    clients.set(address, c);
  }
  return c;
}

/**
 * What the client was told about one blob. A write or delete is "acked" once the
 * call returned success, "unknown" when it failed (it may or may not have
 * happened), "inflight" while the call runs.
 */
export type Outcome = 'inflight' | 'acked' | 'unknown';

export interface BlobRecord {
  id: string;
  sha: string;
  size: number;
  write: Outcome;
  del?: Outcome;
  /** Date.now() of the acknowledgement. */
  writeAckAt?: number;
  deleteAckAt?: number;
  /** Reserved for deletion (never read by the readers: a read racing a delete may see NOT_FOUND). */
  doomed: boolean;
}

/**
 * The independent checker's log of acknowledged operations: every write with the
 * SHA-256 of its bytes, every delete, and what was in flight when a call failed.
 * Nothing here comes from the system under test.
 */
export class OpLog {
  readonly blobs = new Map<string, BlobRecord>();
  private readonly readable: string[] = [];
  private readonly deletable: string[] = [];

  beginWrite(id: string, sha: string, size: number, doomed: boolean): void {
    this.blobs.set(id, { id, sha, size, write: 'inflight', doomed });
  }

  endWrite(id: string, ok: boolean): void {
    const r = this.blobs.get(id);
    if (!r) return;
    r.write = ok ? 'acked' : 'unknown';
    if (!ok) return;
    r.writeAckAt = Date.now();
    (r.doomed ? this.deletable : this.readable).push(id);
  }

  /** An acknowledged blob that is never deleted (for readers). */
  pickReadable(rand: () => number): BlobRecord | undefined {
    if (this.readable.length === 0) return undefined;
    return this.blobs.get(this.readable[Math.floor(rand() * this.readable.length)] as string);
  }

  /** Takes an acknowledged doomed blob to delete (each is deleted at most once). */
  takeDeletable(rand: () => number): BlobRecord | undefined {
    if (this.deletable.length === 0) return undefined;
    const i = Math.floor(rand() * this.deletable.length);
    const id = this.deletable[i] as string;
    this.deletable.splice(i, 1);
    const r = this.blobs.get(id) as BlobRecord;
    r.del = 'inflight';
    return r;
  }

  /** Marks a specific acknowledged blob as being deleted. */
  beginDelete(id: string): void {
    const r = this.blobs.get(id);
    if (!r) return;
    r.del = 'inflight';
    const i = this.deletable.indexOf(id);
    if (i >= 0) this.deletable.splice(i, 1);
  }

  endDelete(id: string, ok: boolean): void {
    const r = this.blobs.get(id);
    if (!r) return;
    r.del = ok ? 'acked' : 'unknown';
    if (ok) r.deleteAckAt = Date.now();
  }

  /** Acked writes that must exist: not deleted, no delete attempted. */
  live(): BlobRecord[] {
    return [...this.blobs.values()].filter((r) => r.write === 'acked' && r.del === undefined);
  }

  deleted(): BlobRecord[] {
    return [...this.blobs.values()].filter((r) => r.del === 'acked');
  }

  /** Outcome unknown: a failed write, or a failed delete. */
  uncertain(): BlobRecord[] {
    return [...this.blobs.values()].filter((r) => r.write !== 'acked' || r.del === 'unknown');
  }

  counts() {
    const all = [...this.blobs.values()];
    return {
      writesAcked: all.filter((r) => r.write === 'acked').length,
      writesUnknown: all.filter((r) => r.write !== 'acked').length,
      deletesAcked: all.filter((r) => r.del === 'acked').length,
      deletesUnknown: all.filter((r) => r.del === 'unknown' || r.del === 'inflight').length,
    };
  }
}

export interface Violation {
  id: string;
  what: string;
}

/**
 * Locates blobs as of the latest commit: a follower answers only once it has
 * applied the highest commit index any instance reports (min_index), as a
 * gateway's reads do; otherwise a lagging follower would show stale state.
 */
async function locateAll(dir: DirectoryClient, ids: string[]): Promise<Map<string, BlobLocation>> {
  const out = new Map<string, BlobLocation>();
  const status = await dir.getClusterStatus();
  let minIndex = 0n;
  for (const d of status.directories) if (d.commitIndex > minIndex) minIndex = d.commitIndex;
  for (let i = 0; i < ids.length; i += 500) {
    const res = await dir.locate(ids.slice(i, i + 500), minIndex);
    for (const l of res.locations) out.set(l.blobId, l);
  }
  return out;
}

async function pool<T>(items: T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      for (;;) {
        const i = next++;
        if (i >= items.length) return;
        await fn(items[i] as T);
      }
    }),
  );
}

const msg = (e: unknown) => (e instanceof Error ? e.message : String(e)).slice(0, 300);

/**
 * Quick check against the stores (no cache in the way): every acked live blob is
 * in the directory and at least one of its replicas returns the exact bytes;
 * every acked delete is gone from the directory. A blob that looks missing is
 * looked at again for a few seconds (a follower may lag the leader).
 */
export async function quickCheck(
  log: OpLog,
  dir: DirectoryClient,
  ackedBefore: number,
): Promise<Violation[]> {
  const live = log.live().filter((r) => (r.writeAckAt ?? 0) <= ackedBefore);
  const deleted = log.deleted().filter((r) => (r.deleteAckAt ?? 0) <= ackedBefore);
  let suspects = await checkOnce(dir, live, deleted);
  for (let attempt = 0; attempt < 5 && suspects.length > 0; attempt++) {
    await new Promise((r) => setTimeout(r, 1000));
    const ids = new Set(suspects.map((v) => v.id));
    suspects = await checkOnce(
      dir,
      live.filter((r) => ids.has(r.id)),
      deleted.filter((r) => ids.has(r.id)),
    );
  }
  return suspects;
}

async function checkOnce(
  dir: DirectoryClient,
  all: BlobRecord[],
  deleted: BlobRecord[],
): Promise<Violation[]> {
  const v: Violation[] = [];
  // The load goes on meanwhile: a blob taken for deletion since is no longer owed.
  const owed = (r: BlobRecord) => r.del === undefined;
  const live = all.filter(owed);
  const locs = await locateAll(
    dir,
    [...live, ...deleted].map((r) => r.id),
  );
  for (const r of deleted) {
    if (locs.get(r.id)?.found)
      v.push({ id: r.id, what: 'acknowledged delete, but the directory still has it' });
  }
  await pool(live, 8, async (r) => {
    const loc = locs.get(r.id);
    if (!loc?.found || !loc.blob) {
      if (owed(r)) v.push({ id: r.id, what: 'acknowledged write missing from the directory' });
      return;
    }
    const errors: string[] = [];
    for (const rep of loc.replicas) {
      try {
        const data = await readBlob(store(rep.address), r.id, { cookie: loc.blob.cookie });
        if (sha256hex(data) === r.sha) return;
        errors.push(`${rep.storeId}: wrong bytes`);
      } catch (e) {
        errors.push(`${rep.storeId}: ${msg(e)}`);
      }
    }
    if (owed(r))
      v.push({ id: r.id, what: `no replica returned the acknowledged bytes (${errors.join('; ')})` });
  });
  return v;
}

/**
 * The final verification, through the gateway (SDK via Envoy) and directly
 * against the stores:
 * - every acknowledged write reads back byte-identical (SHA-256) through the SDK,
 *   and every replica the directory lists holds identical bytes;
 * - every acknowledged delete is NOT_FOUND through the SDK, absent from the
 *   directory, and (once its tombstones are delivered) on no store;
 * - a write whose outcome is unknown is either absent or complete: never other bytes.
 */
export async function fullCheck(
  log: OpLog,
  sdk: HaystackClient,
  dir: DirectoryClient,
  storeAddresses: string[],
): Promise<Violation[]> {
  const v: Violation[] = [];
  const live = log.live();
  const deleted = log.deleted();
  const uncertain = log.uncertain();
  const locs = await locateAll(dir, [...log.blobs.keys()]);

  await pool(live, 8, async (r) => {
    try {
      const { data } = await sdk.download(r.id, { timeoutMs: 30_000 });
      if (sha256hex(data) !== r.sha) v.push({ id: r.id, what: 'SDK read returned other bytes' });
    } catch (e) {
      v.push({ id: r.id, what: `SDK read failed: ${msg(e)}` });
    }
    const loc = locs.get(r.id);
    if (!loc?.found || !loc.blob) {
      v.push({ id: r.id, what: 'acknowledged write missing from the directory' });
      return;
    }
    if (loc.replicas.length === 0) v.push({ id: r.id, what: 'no replica listed' });
    for (const rep of loc.replicas) {
      try {
        const data = await readBlob(store(rep.address), r.id, { cookie: loc.blob.cookie });
        if (sha256hex(data) !== r.sha)
          v.push({ id: r.id, what: `replica on ${rep.storeId} holds other bytes` });
      } catch (e) {
        v.push({ id: r.id, what: `replica on ${rep.storeId} unreadable: ${msg(e)}` });
      }
    }
  });

  await pool(deleted, 8, async (r) => {
    if (locs.get(r.id)?.found)
      v.push({ id: r.id, what: 'acknowledged delete, but the directory still has it' });
    const err = await sdk.download(r.id, { timeoutMs: 30_000 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    if (!(err instanceof NotFoundError)) {
      v.push({ id: r.id, what: `acknowledged delete, SDK read gave ${err ? msg(err) : 'the blob back'}` });
    }
  });

  // Tombstones reach every store holding a deleted blob (they are durable in the
  // directory until confirmed); orphans of failed writes are collected.
  const deadline = Date.now() + 60_000;
  let leftovers: Violation[] = [];
  for (;;) {
    leftovers = [];
    await pool(deleted, 8, async (r) => {
      for (const addr of storeAddresses) {
        const code = await readBlob(store(addr), r.id).then(
          () => 'present',
          (e: unknown) => (ConnectError.from(e).code === Code.NotFound ? 'gone' : `error ${msg(e)}`),
        );
        if (code !== 'gone')
          leftovers.push({ id: r.id, what: `deleted blob still ${code} on store ${addr}` });
      }
    });
    if (leftovers.length === 0 || Date.now() > deadline) break;
    await new Promise((res) => setTimeout(res, 1000));
  }
  v.push(...leftovers);

  await pool(uncertain, 8, async (r) => {
    const loc = locs.get(r.id);
    try {
      const { data } = await sdk.download(r.id, { timeoutMs: 30_000 });
      if (r.del === 'unknown') {
        if (sha256hex(data) !== r.sha) v.push({ id: r.id, what: 'delete of unknown outcome: other bytes' });
      } else if (sha256hex(data) !== r.sha) {
        v.push({ id: r.id, what: 'unacknowledged write visible with other bytes (half-written)' });
      }
    } catch (e) {
      if (!(e instanceof NotFoundError)) v.push({ id: r.id, what: `uncertain blob: read failed: ${msg(e)}` });
    }
    if (loc?.found && loc.blob) {
      for (const rep of loc.replicas) {
        const data = await readBlob(store(rep.address), r.id, { cookie: loc.blob.cookie }).catch(
          (e: unknown) => e as Error,
        );
        if (data instanceof Error)
          v.push({ id: r.id, what: `uncertain blob listed on ${rep.storeId}: ${msg(data)}` });
        else if (sha256hex(data) !== r.sha)
          v.push({ id: r.id, what: `uncertain blob: ${rep.storeId} holds other bytes` });
      }
    }
  });
  return v;
}

/**
 * Waits until every acknowledged live blob has exactly its target number of
 * replicas, all on HEALTHY stores. Returns the time it took, or throws with the
 * blobs still off target.
 */
export async function waitReplicated(
  log: OpLog,
  dir: DirectoryClient,
  timeoutMs: number,
): Promise<{ ms: number; blobs: number }> {
  const t0 = Date.now();
  const ids = log.live().map((r) => r.id);
  let off: string[] = [];
  for (;;) {
    off = [];
    try {
      const locs = await locateAll(dir, ids);
      for (const id of ids) {
        const l = locs.get(id);
        const target = l?.blob?.targetReplicaCount ?? 0;
        const healthy = l?.replicas.filter((x) => x.health === StoreHealth.HEALTHY).length ?? 0;
        const recorded = l?.blob?.replicas.length ?? 0;
        if (!l?.found || healthy !== target || recorded !== target) {
          off.push(`${id}: ${healthy} healthy / ${recorded} recorded / target ${target}`);
        }
      }
    } catch (e) {
      off.push(`locate failed: ${msg(e)}`);
    }
    if (off.length === 0) return { ms: Date.now() - t0, blobs: ids.length };
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(
        `${off.length} blobs not at their target replica count after ${timeoutMs} ms: ${off.slice(0, 10).join('; ')}`,
      );
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}
