import { Code, ConnectError } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import type { DirectoryClient } from '../../internal/directory/client.js';
import { type HaystackClient, NotFoundError } from '../../internal/sdk/index.js';
import { readBlob } from '../helpers/store-client.js';
import { type Holders, holdersOf, inventory } from './locate.js';
import { type BlobRecord, type OpLog, sha256hex, store } from './oplog.js';

/**
 * The independent checks of the fault suite against the log of acknowledged
 * operations (oplog.ts): a quick one after each fault, the full one at the end,
 * and the wait for every blob to be back at its target replica count.
 *
 * Cost: each blob costs one read per holder (plus one SDK read in the full
 * check), streamed over one HTTP/2 connection per store (oplog.ts `store`) and
 * the SDK's one connection to Envoy: no TLS handshake per operation. Holders come
 * from the placement map or one Locate per 500 ids, not from a Stat per blob.
 */

export interface Violation {
  id: string;
  what: string;
}

/** Blobs checked at once; each reads all its holders (and the SDK) in parallel. */
const CONCURRENCY = 16;

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

/** What one holder returned for a blob: its bytes match, other bytes, none, or an error. */
type Copy = { storeId: string; got: 'ok' | 'other bytes' | 'not found' | `error: ${string}` };

async function readCopy(
  rep: { storeId: string; address: string },
  r: BlobRecord,
  cookie?: bigint,
): Promise<Copy> {
  try {
    const data = await readBlob(store(rep.address), r.id, cookie === undefined ? {} : { cookie });
    return { storeId: rep.storeId, got: sha256hex(data) === r.sha ? 'ok' : 'other bytes' };
  } catch (e) {
    const code = ConnectError.from(e).code;
    return { storeId: rep.storeId, got: code === Code.NotFound ? 'not found' : `error: ${msg(e)}` };
  }
}

const describe = (copies: Copy[]) => copies.map((c) => `${c.storeId}: ${c.got}`).join('; ');

/** Whether a store serves the blob (Stat): 'gone' when NOT_FOUND (absent or tombstoned). */
async function presence(address: string, id: string): Promise<string> {
  return store(address)
    .stat({ blobId: id }, { timeoutMs: 30_000 })
    .then(
      () => 'present',
      (e: unknown) => (ConnectError.from(e).code === Code.NotFound ? 'gone' : `error ${msg(e)}`),
    );
}

/**
 * Quick check against the stores (no cache in the way): every acked live blob has
 * a holder that returns the exact bytes; no holder serves an acked delete (v1: the
 * directory has no record of it). A blob that looks wrong is looked at again for
 * a few seconds (a follower may lag the leader).
 */
export async function quickCheck(
  log: OpLog,
  dir: DirectoryClient,
  ackedBefore: number,
): Promise<Violation[]> {
  const live = log.live().filter((r) => (r.writeAckAt ?? 0) <= ackedBefore);
  const deleted = log.deleted().filter((r) => (r.deleteAckAt ?? 0) <= ackedBefore);
  let suspects = (await bulkCheck(dir, live, deleted)) ?? (await checkOnce(dir, live, deleted));
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

/**
 * The first pass of the quick check on placement groups: the holders' listings
 * (inventory) instead of a read per blob. A live blob passes when a holder lists
 * a live needle of its size and SHA-256; an acknowledged delete when no holder
 * lists it live. Whatever does not pass is looked at again by reads (checkOnce).
 * undefined on the v1 layout.
 */
async function bulkCheck(
  dir: DirectoryClient,
  all: BlobRecord[],
  deleted: BlobRecord[],
): Promise<Violation[] | undefined> {
  const owed = (r: BlobRecord) => r.del === undefined;
  const live = all.filter(owed);
  const inv = await inventory(
    dir,
    [...live, ...deleted].map((r) => r.id),
  );
  if (!inv) return undefined;
  const v: Violation[] = [];
  for (const r of deleted) {
    for (const rep of inv.holders.get(r.id)?.replicas ?? []) {
      const f = inv.facts(rep.storeId, r.id);
      if (f && !f.deleted)
        v.push({ id: r.id, what: `acknowledged delete, but ${rep.storeId} still lists it` });
    }
  }
  for (const r of live) {
    const seen: string[] = [];
    let ok = false;
    for (const rep of inv.holders.get(r.id)?.replicas ?? []) {
      const f = inv.facts(rep.storeId, r.id);
      ok ||= f !== undefined && !f.deleted && f.size === BigInt(r.size) && hex(f.sha256) === r.sha;
      seen.push(
        `${rep.storeId}: ${!f ? 'absent' : f.deleted ? 'tombstone' : `${f.size} B, sha256 ${hex(f.sha256).slice(0, 12)}…`}`,
      );
    }
    if (!ok && owed(r))
      v.push({ id: r.id, what: `no holder lists the acknowledged needle (${seen.join('; ')})` });
  }
  return v;
}

const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

async function checkOnce(
  dir: DirectoryClient,
  all: BlobRecord[],
  deleted: BlobRecord[],
): Promise<Violation[]> {
  const v: Violation[] = [];
  // The load goes on meanwhile: a blob taken for deletion since is no longer owed.
  const owed = (r: BlobRecord) => r.del === undefined;
  const live = all.filter(owed);
  const where = await holdersOf(
    dir,
    [...live, ...deleted].map((r) => r.id),
  );
  await pool(deleted, CONCURRENCY, async (r) => {
    const h = where.get(r.id);
    if (!h) return;
    if (h.listed) v.push({ id: r.id, what: 'acknowledged delete, but the directory still has it' });
    if (h.listed !== undefined) return;
    for (const rep of h.replicas) {
      if ((await presence(rep.address, r.id)) === 'present')
        v.push({ id: r.id, what: `acknowledged delete, but ${rep.storeId} still serves it` });
    }
  });
  await pool(live, CONCURRENCY, async (r) => {
    const h = where.get(r.id);
    if (h?.listed === false || !h) {
      if (owed(r)) v.push({ id: r.id, what: 'acknowledged write missing from the directory' });
      return;
    }
    const copies: Copy[] = [];
    for (const rep of h.replicas) {
      const c = await readCopy(rep, r, h.cookie);
      if (c.got === 'ok') return;
      copies.push(c);
    }
    if (owed(r))
      v.push({ id: r.id, what: `no replica returned the acknowledged bytes (${describe(copies)})` });
  });
  return v;
}

/**
 * The final verification, complete (every acknowledged operation, no sampling),
 * through the gateway (SDK via Envoy) and directly against the stores:
 * - every acknowledged write reads back byte-identical (SHA-256) through the SDK,
 *   and every holder (v1: every replica the directory lists) returns identical bytes;
 * - every acknowledged delete is NOT_FOUND through the SDK, has no directory
 *   record (v1), and (once its tombstones are delivered) is served by no store;
 * - a write whose outcome is unknown is either absent or complete: never other bytes.
 *
 * Each blob is read once per holder, the holders and the SDK in parallel; a
 * deleted blob is a Stat per store, and only the stores that still had it are
 * asked again while tombstones are delivered.
 */
export async function fullCheck(
  log: OpLog,
  sdk: HaystackClient,
  dir: DirectoryClient,
  storeAddresses: string[],
  say: (line: string) => void = () => {},
): Promise<Violation[]> {
  const v: Violation[] = [];
  const live = log.live();
  const deleted = log.deleted();
  const uncertain = log.uncertain();
  let t = Date.now();
  let cpu = process.cpuUsage();
  // Wall time against this process's CPU: how much of a phase is the checker itself
  // (hashing, decoding, TLS) and how much waiting for the cluster.
  const phase = (what: string) => {
    const used = process.cpuUsage(cpu);
    say(
      `full check: ${what} in ${((Date.now() - t) / 1000).toFixed(1)} s (checker CPU ${((used.user + used.system) / 1e6).toFixed(1)} s)`,
    );
    t = Date.now();
    cpu = process.cpuUsage();
  };
  const where = await holdersOf(dir, [...log.blobs.keys()]);
  phase(`holders of ${where.size} blobs`);

  const sdkRead = (r: BlobRecord) =>
    sdk.download(r.id, { timeoutMs: 30_000 }).then(
      ({ data }) => (sha256hex(data) === r.sha ? 'ok' : 'other bytes'),
      (e: unknown) => (e instanceof NotFoundError ? 'not found' : `failed: ${msg(e)}`),
    );

  await pool(live, CONCURRENCY, async (r) => {
    const h = where.get(r.id);
    const [viaSdk, copies] = await Promise.all([
      sdkRead(r),
      Promise.all((h?.replicas ?? []).map((rep) => readCopy(rep, r, h?.cookie))),
    ]);
    if (viaSdk === 'other bytes') v.push({ id: r.id, what: 'SDK read returned other bytes' });
    else if (viaSdk !== 'ok') v.push({ id: r.id, what: `SDK read ${viaSdk}` });
    if (!h || h.listed === false) {
      v.push({ id: r.id, what: 'acknowledged write missing from the directory' });
      return;
    }
    if (copies.length === 0) v.push({ id: r.id, what: 'no replica listed' });
    for (const c of copies) {
      if (c.got === 'other bytes') v.push({ id: r.id, what: `replica on ${c.storeId} holds other bytes` });
      else if (c.got !== 'ok') v.push({ id: r.id, what: `replica on ${c.storeId} unreadable: ${c.got}` });
    }
  });
  phase(`${live.length} live blobs (SDK and every holder)`);

  await pool(deleted, CONCURRENCY, async (r) => {
    if (where.get(r.id)?.listed)
      v.push({ id: r.id, what: 'acknowledged delete, but the directory still has it' });
    const viaSdk = await sdkRead(r);
    if (viaSdk !== 'not found') {
      v.push({
        id: r.id,
        what: `acknowledged delete, SDK read gave ${viaSdk === 'ok' ? 'the blob back' : viaSdk}`,
      });
    }
  });
  phase(`${deleted.length} deleted blobs through the SDK`);

  // Tombstones reach every store holding a deleted blob (they are durable in the
  // directory until confirmed); orphans of failed writes are collected. Each
  // round asks again only the (blob, store) pairs that still answered.
  // First from the listings of every store (placement groups): only the pairs a
  // store still lists live, and every pair on a store the listings missed, are asked.
  const deadline = Date.now() + 60_000;
  const inv = await inventory(
    dir,
    deleted.map((r) => r.id),
    { everyStore: true },
  );
  const listedAddrs = new Set(inv?.stores.values() ?? []);
  const idOf = new Map([...(inv?.stores ?? [])].map(([id, addr]) => [addr, id]));
  let pending = deleted.flatMap((r) =>
    storeAddresses
      .filter((addr) => {
        if (!inv || !listedAddrs.has(addr)) return true;
        const f = inv.facts(idOf.get(addr) ?? '', r.id);
        return f !== undefined && !f.deleted;
      })
      .map((addr) => ({ r, addr })),
  );
  let leftovers: Violation[] = [];
  for (;;) {
    leftovers = [];
    const still: typeof pending = [];
    await pool(pending, CONCURRENCY, async (p) => {
      const code = await presence(p.addr, p.r.id);
      if (code === 'gone') return;
      still.push(p);
      leftovers.push({ id: p.r.id, what: `deleted blob still ${code} on store ${p.addr}` });
    });
    pending = still;
    if (pending.length === 0 || Date.now() > deadline) break;
    await new Promise((res) => setTimeout(res, 1000));
  }
  v.push(...leftovers);
  phase(`${deleted.length} deleted blobs on ${storeAddresses.length} stores`);

  await pool(uncertain, CONCURRENCY, async (r) => {
    const h = where.get(r.id);
    const [viaSdk, copies] = await Promise.all([
      sdkRead(r),
      Promise.all((h?.replicas ?? []).map((rep) => readCopy(rep, r, h?.cookie))),
    ]);
    if (viaSdk === 'other bytes') {
      v.push({
        id: r.id,
        what:
          r.del === 'unknown'
            ? 'delete of unknown outcome: other bytes'
            : 'unacknowledged write visible with other bytes (half-written)',
      });
    } else if (viaSdk !== 'ok' && viaSdk !== 'not found') {
      v.push({ id: r.id, what: `uncertain blob: read ${viaSdk}` });
    }
    // Present (v1: listed; placement: some holder has it): then every holder has it whole.
    const present = h?.listed ?? copies.some((c) => c.got === 'ok' || c.got === 'other bytes');
    if (!present) return;
    for (const c of copies) {
      if (c.got === 'other bytes')
        v.push({ id: r.id, what: `uncertain blob: ${c.storeId} holds other bytes` });
      else if (c.got !== 'ok') v.push({ id: r.id, what: `uncertain blob listed on ${c.storeId}: ${c.got}` });
    }
  });
  phase(`${uncertain.length} blobs of unknown outcome`);
  return v;
}

/**
 * Waits until every acknowledged live blob has exactly its target number of
 * replicas, all on HEALTHY stores (by the directory: no store is asked). Returns
 * the time it took, or throws with the blobs still off target.
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
      const where = await holdersOf(dir, ids);
      for (const id of ids) {
        const h: Holders | undefined = where.get(id);
        const target = h?.target ?? 0;
        const healthy = h?.replicas.filter((x) => x.health === StoreHealth.HEALTHY).length ?? 0;
        const recorded = h?.recorded ?? 0;
        if (!h || h.listed === false || healthy !== target || recorded !== target) {
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
