import type { Redis } from 'ioredis';

/**
 * The Lua scripts of the Redis blob cache (RedisBlobCache), each one atomic in Redis,
 * and their answers. Why each is safe is stated above it; docs/edge.md has the whole
 * protocol (fill leases, the epoch, the shared commit index).
 */

/** SET_BLOB's answers. */
export const SET_CACHED = 1;
export const SET_REFUSED_LEASE = 0;
export const SET_REFUSED_EPOCH = -1;

/** TAKE_LEASE's answers (the first element; the second is the shared commit index). */
export const LEASE_GRANTED = 1;
export const LEASE_CACHED = 2;
export const LEASE_REFUSED_HELD = 0;
export const LEASE_REFUSED_TOMBSTONE = -2;
export const LEASE_REFUSED_EPOCH = -1;
export const LEASE_REFUSED_INDEX = -3;

// Fill leases (Nishtala et al., "Scaling Memcache at Facebook", NSDI 2013, §3.2.1):
// a miss takes the id's lease before its read begins; a delete deletes the lease in the
// same transaction as it writes the tombstone; a fill lands only while its lease is the
// id's lease. So a fill stands for a read begun after every delete that reached this
// Redis, whatever the time: no TTL (tombstone, lease) decides safety, only liveness.

// KEYS[1] blob key, KEYS[2] tombstone key, KEYS[3] lease key, KEYS[4] epoch key,
// KEYS[5] commit index key; ARGV a new random token, lease ms, the epoch the gateway
// holds. {answer, commit index}: the index as of the grant, so the read's Locate asks
// for every delete acknowledged before it (a delete raises it with its invalidation).
// No index, no lease: the cache lost it, and a read Locating below a recent delete may
// reach a follower that has not applied it (restoreIndex puts it back).
const TAKE_LEASE = `
local index = redis.call('GET', KEYS[5])
if redis.call('GET', KEYS[4]) ~= ARGV[3] then return {${LEASE_REFUSED_EPOCH}, index} end
if not index then return {${LEASE_REFUSED_INDEX}, index} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {${LEASE_CACHED}, index} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {${LEASE_REFUSED_TOMBSTONE}, index} end
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return {${LEASE_REFUSED_HELD}, index} end
return {${LEASE_GRANTED}, index}
`;

// Push-on-write is ordered after deletes the same way: the write takes the id's lease
// (TAKE_WRITE_LEASE, replacing any) before the stores can commit it, and its push is a fill
// under that lease. A delete acknowledged after the commit deleted it; one acknowledged
// before the grant was applied before the commit, and the write stands over it.

// KEYS[1] lease key, KEYS[2] epoch key; ARGV a new random token, lease ms, the epoch the
// gateway holds. No NX, no entry or tombstone check (BlobCache.writeLease).
const TAKE_WRITE_LEASE = `
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return ${LEASE_REFUSED_EPOCH} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ${LEASE_GRANTED}
`;

// KEYS[1] blob key, KEYS[2] tombstone key, KEYS[3] epoch key, KEYS[4] lease key; ARGV
// value, ttl ms, the epoch the gateway holds, the lease token (a fill's or a write's).
// Lands only while its lease stands (no tombstone check: a delete after the grant deleted
// the lease with it; one before it refused a fill's grant, and a write stands over it), and
// only in the cache whose epoch the gateway holds (BlobCache.set). Ends the lease.
const SET_BLOB = `
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return ${SET_REFUSED_EPOCH} end
if redis.call('GET', KEYS[4]) ~= ARGV[4] then return ${SET_REFUSED_LEASE} end
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ${SET_CACHED}
`;

// KEYS[1] lease key; ARGV token. Deletes the lease if it is still this one.
const RELEASE_LEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
`;

// KEYS[1] epoch key, KEYS[2] commit index key; ARGV a new random value, stored when the
// key is missing. {the epoch, 1 when the commit index is there}.
const LEARN_EPOCH = `
local e = redis.call('GET', KEYS[1])
if not e then
  e = ARGV[1]
  redis.call('SET', KEYS[1], e)
end
return {e, redis.call('EXISTS', KEYS[2])}
`;

// KEYS[1] commit index key, KEYS[2] its floor; ARGV index. Only ever raised, and never
// created: an index below a delete acknowledged before the cache lost its state would
// send reads to followers that missed it. While it is missing the floor keeps the
// highest index raised (deletes acknowledged meanwhile), for RESTORE_INDEX.
const RAISE_INDEX = `
local cur = redis.call('GET', KEYS[1])
local key = KEYS[1]
if not cur then
  key = KEYS[2]
  cur = redis.call('GET', key)
end
if tonumber(ARGV[1]) > tonumber(cur or '0') then redis.call('SET', key, ARGV[1]) end
return 1
`;

// KEYS[1] commit index key, KEYS[2] its floor, KEYS[3] epoch key; ARGV the leader's
// commit index, the epoch the gateway held when it asked for it. Sets the index to the
// highest of the three, unless the epoch changed meanwhile: then the cache lost its state
// again after the leader's index was read, and a delete acknowledged in between may be
// above it (its raise went with that state). The index, or '' when refused.
const RESTORE_INDEX = `
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return '' end
local v = tonumber(ARGV[1])
for i = 1, 2 do
  local x = tonumber(redis.call('GET', KEYS[i]) or '0')
  if x > v then v = x end
end
redis.call('SET', KEYS[1], string.format('%d', v))
return string.format('%d', v)
`;

type RaiseIndexCommand = (key: string, floorKey: string, index: string) => Promise<number>;
type RestoreIndexCommand = (
  key: string,
  floorKey: string,
  epochKey: string,
  index: string,
  epoch: string,
) => Promise<string>;
type LearnEpochCommand = (key: string, indexKey: string, candidate: string) => Promise<[string, number]>;
type SetBlobCommand = (
  blobKey: string,
  tombKey: string,
  epochKey: string,
  leaseKey: string,
  value: Buffer,
  ttl: number,
  epoch: string,
  token: string,
) => Promise<number>;
type TakeWriteLeaseCommand = (
  leaseKey: string,
  epochKey: string,
  token: string,
  leaseMs: number,
  epoch: string,
) => Promise<number>;
type TakeLeaseCommand = (
  blobKey: string,
  tombKey: string,
  leaseKey: string,
  epochKey: string,
  indexKey: string,
  token: string,
  leaseMs: number,
  epoch: string,
) => Promise<[number, string | null]>;
type ReleaseLeaseCommand = (leaseKey: string, token: string) => Promise<number>;
/** The scripts, as ioredis commands once withCacheScripts has defined them. */
export type CacheCommands = {
  hsSetBlob: SetBlobCommand;
  hsTakeLease: TakeLeaseCommand;
  hsTakeWriteLease: TakeWriteLeaseCommand;
  hsReleaseLease: ReleaseLeaseCommand;
  hsRaiseIndex: RaiseIndexCommand;
  hsRestoreIndex: RestoreIndexCommand;
  hsLearnEpoch: LearnEpochCommand;
};

/** Defines the scripts on a connection (ioredis sends EVALSHA, then EVAL once per script). */
export function withCacheScripts(redis: Redis): Redis & CacheCommands {
  redis.defineCommand('hsRaiseIndex', { numberOfKeys: 2, lua: RAISE_INDEX });
  redis.defineCommand('hsRestoreIndex', { numberOfKeys: 3, lua: RESTORE_INDEX });
  redis.defineCommand('hsLearnEpoch', { numberOfKeys: 2, lua: LEARN_EPOCH });
  redis.defineCommand('hsSetBlob', { numberOfKeys: 4, lua: SET_BLOB });
  redis.defineCommand('hsTakeLease', { numberOfKeys: 5, lua: TAKE_LEASE });
  redis.defineCommand('hsTakeWriteLease', { numberOfKeys: 2, lua: TAKE_WRITE_LEASE });
  redis.defineCommand('hsReleaseLease', { numberOfKeys: 1, lua: RELEASE_LEASE });
  return redis as Redis & CacheCommands;
}
