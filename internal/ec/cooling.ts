/**
 * Moving one blob between tiers (docs/design/ec-tier.md, "Moving between tiers"),
 * in the crash-safe order: at every instant the blob has its full replicas, or
 * k + m durable shards AND stubs naming them — never only a stub.
 *
 * coolBlob: read a full replica (SHA-256 checked) → encode → every shard durable
 * on its EC store → stub on every group member, stamped above the full needle
 * (the commit point: the stub supersedes the full needle). warmBlob: read the
 * stripe → full needle on every member, stamped above the stub → only then the
 * shards are deleted. Runs in the replication manager (the planner decides when:
 * tier-policy.ts); a stripe here is one blob (stripe id = blob id, offset 0).
 */
import { createHash } from 'node:crypto';
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { ColdRefSchema } from '../../gen/haystack/v1/common_pb.js';
import {
  type NeedleFacts,
  type WriteHeaderSchema,
  type WriteRequest,
  WriteRequestSchema,
} from '../../gen/haystack/v1/store_pb.js';
import { type EcParams, encodeBlob, type ShardLayout } from './codec.js';
import { layoutFromWire, layoutToWire } from './layout-wire.js';
import { putStripe, readStripe, type StoreClient } from './shard-client.js';

export interface TierMove {
  /** The blob's placement-group members, every one of which gets the stub (or the full needle back). */
  members: readonly StoreClient[];
  /** The group's EC members: shard i goes to ecStores[i] (k + m of them). */
  ecStores: readonly StoreClient[];
  /** The replication manager's fencing term (0 when unknown). */
  term?: bigint;
  /** Ends every call of the move (a deadline, or the lease lost): the move fails, never half-commits silently. */
  signal?: AbortSignal;
}

/** Where a cooled blob's bytes went. */
export interface Cooled {
  stripeId: string;
  layout: ShardLayout;
  /** The stubs' stamp. */
  stampMs: bigint;
}

const CHUNK = 256 * 1024;

async function readFull(
  client: StoreClient,
  blobId: string,
  signal?: AbortSignal,
): Promise<{ facts: NeedleFacts; data: Buffer }> {
  let facts: NeedleFacts | undefined;
  const parts: Uint8Array[] = [];
  // internal: the encode's own read is no access heat (it would keep the blob warm).
  for await (const msg of client.read({ blobId, internal: true }, signal ? { signal } : {})) {
    if (msg.msg.case === 'header') facts = msg.msg.value.needle;
    else if (msg.msg.case === 'chunk') parts.push(msg.msg.value);
  }
  if (facts?.sha256.length !== 32) throw new Error(`${blobId}: the replica reports no needle facts`);
  const data = Buffer.concat(parts);
  if (!createHash('sha256').update(data).digest().equals(facts.sha256)) {
    throw new Error(`${blobId}: the replica read does not match its SHA-256`);
  }
  return { facts, data };
}

/** One message stream of a Write: the header, then the content in chunks. */
async function* writeMessages(
  header: MessageInitShape<typeof WriteHeaderSchema>,
  data?: Uint8Array,
): AsyncGenerator<WriteRequest> {
  yield create(WriteRequestSchema, { msg: { case: 'header', value: header } });
  for (let at = 0; data && at < data.length; at += CHUNK) {
    yield create(WriteRequestSchema, { msg: { case: 'chunk', value: data.subarray(at, at + CHUNK) } });
  }
}

/** A Write header for the same blob (cookie, size, SHA-256, metadata) under a new stamp. */
function sameBlob(
  blobId: string,
  facts: NeedleFacts,
  stampMs: bigint,
): MessageInitShape<typeof WriteHeaderSchema> {
  return {
    blobId,
    cookie: facts.cookie,
    size: facts.size,
    sha256: facts.sha256,
    contentType: facts.contentType,
    fileName: facts.fileName,
    writtenAtMs: stampMs,
  };
}

/**
 * Waits for every member's write to settle (so the state on return is final:
 * no write still in flight), then throws the first failure, naming the member.
 */
async function allMembers<T>(writes: Promise<T>[]): Promise<T[]> {
  const settled = await Promise.allSettled(writes);
  const i = settled.findIndex((r) => r.status === 'rejected');
  if (i >= 0) {
    const reason = (settled[i] as PromiseRejectedResult).reason as Error;
    throw new Error(`group member ${i}: ${reason.message}`, { cause: reason });
  }
  return settled.map((r) => (r as PromiseFulfilledResult<T>).value);
}

/** Throws unless every member answered the needle stamped `stamp` (a newer one here wins, and the move stops). */
function checkStamps(what: string, blobId: string, stamps: bigint[], stamp: bigint): void {
  const other = stamps.find((s) => s !== stamp);
  if (other !== undefined) {
    throw new Error(
      `${blobId}: a member holds a newer needle (stamp ${other}) than the ${what} (${stamp}); stopped`,
    );
  }
}

/**
 * Cools `blobId`: encodes it with `code` onto `t.ecStores`, then replaces the full
 * needle on every member with a stub. Throws (leaving the blob replicated, plus
 * orphan shards for GC) when any shard or stub write fails.
 */
export async function coolBlob(blobId: string, code: EcParams, t: TierMove): Promise<Cooled> {
  const opts = t.signal ? { signal: t.signal } : {};
  const { facts, data } = await readFull(t.members[0] as StoreClient, blobId, t.signal);
  const enc = await encodeBlob(data, code);
  await putStripe(blobId, enc, t.ecStores, { term: t.term ?? 0n, ...opts });
  // Commit point: only with every shard durable does any member get the stub.
  const stampMs = facts.writtenAtMs + 1n;
  const cold = create(ColdRefSchema, { stripeId: blobId, offset: 0n, layout: layoutToWire(enc.layout) });
  const answers = await allMembers(
    t.members.map((m) =>
      m.write(
        writeMessages({
          ...sameBlob(blobId, facts, stampMs),
          term: t.term ?? 0n,
          cold,
        }),
        opts,
      ),
    ),
  );
  checkStamps(
    'stub',
    blobId,
    answers.map((a) => a.writtenAtMs),
    stampMs,
  );
  return { stripeId: blobId, layout: enc.layout, stampMs };
}

/**
 * Warms a cold `blobId`: reads its stripe (decoding if shards are missing), writes
 * the full needle to every member stamped above the stub, and only then deletes
 * the shards (best effort: a failed delete leaves an orphan for GC, never a loss).
 */
export async function warmBlob(blobId: string, t: TierMove): Promise<{ decoded: boolean }> {
  const opts = t.signal ? { signal: t.signal } : {};
  const stat = await (t.members[0] as StoreClient).stat({ blobId }, opts);
  const facts = stat.needle;
  const ref = facts?.cold;
  if (!facts || !ref) throw new Error(`${blobId} is not cold on the first member`);
  const layout = layoutFromWire(ref.layout);
  if (typeof layout === 'string') throw new Error(`${blobId}: ${layout}`);
  const read = await readStripe(ref.stripeId, layout, t.ecStores, opts);
  const data = read.data.subarray(Number(ref.offset), Number(ref.offset + facts.size));
  if (!createHash('sha256').update(data).digest().equals(facts.sha256)) {
    throw new Error(`${blobId}: the stripe's bytes do not match the stub's SHA-256`);
  }
  const stampMs = facts.writtenAtMs + 1n;
  const answers = await allMembers(
    t.members.map((m) =>
      m.write(writeMessages({ ...sameBlob(blobId, facts, stampMs), term: t.term ?? 0n }, data), opts),
    ),
  );
  checkStamps(
    'full needle',
    blobId,
    answers.map((a) => a.writtenAtMs),
    stampMs,
  );
  // Only now may the shards go.
  await Promise.allSettled(
    t.ecStores.map((s, i) => s.deleteShard({ stripeId: ref.stripeId, index: i, term: t.term ?? 0n }, opts)),
  );
  return { decoded: read.decoded };
}
