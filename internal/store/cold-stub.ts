/**
 * Cold stubs (docs/design/ec-tier.md): when a blob moves to the erasure-coded
 * tier, each member of its placement group keeps a small needle of the blob's own
 * id whose content is a ColdStub (where the blob's bytes are in which stripe, and
 * the facts the full needle had), stamped above the full needle it supersedes.
 * The needle format is unchanged: a stub is marked by a content type that only a
 * Write with `cold` set may produce (service.ts refuses it otherwise), and stamps
 * order stubs, full needles and tombstones like any needles.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import type { ColdRef } from '../../gen/haystack/v1/common_pb.js';
import {
  type ColdStub,
  ColdStubSchema,
  type WriteHeader,
  type WriteResponse,
  WriteResponseSchema,
} from '../../gen/haystack/v1/store_pb.js';
import { STUB_CONTENT_TYPE, validateStripeId } from '../common/shard-key.js';
import { layoutFromWire } from '../ec/layout-wire.js';
import { InvalidArgumentError } from './errors.js';
import type { Store } from './store.js';
import type { NeedleFactsInfo } from './store-core.js';
import { checkMetaField } from './store-write.js';
import { decodeStub, isStub } from './stub-content.js';

export { isStub, STUB_CONTENT_TYPE };

/** Problem with a ColdRef from the wire, or undefined. */
export function checkColdRef(ref: ColdRef, blobSize: bigint): string | undefined {
  const bad = validateStripeId(ref.stripeId);
  if (bad) return `cold.stripe_id: ${bad}`;
  const layout = layoutFromWire(ref.layout);
  if (typeof layout === 'string') return `cold.layout: ${layout}`;
  if (ref.offset + blobSize > BigInt(layout.size)) {
    return `cold: bytes [${ref.offset}, ${ref.offset + blobSize}) lie beyond the stripe's ${layout.size} bytes`;
  }
  return undefined;
}

/** The stub content for a blob. */
export function encodeStub(s: Omit<ColdStub, '$typeName' | '$unknown'>): Uint8Array {
  return toBinary(ColdStubSchema, create(ColdStubSchema, s));
}

/** Reads and decodes the stub needle of `blobId` (facts `f`, already known to be a stub). */
export async function readStub(store: Store, blobId: string, f: NeedleFactsInfo): Promise<ColdStub> {
  return decodeStub(blobId, f, () => ({
    async *[Symbol.asyncIterator]() {
      yield* (await store.openRead(blobId)).stream();
    },
  }));
}

/** The blob's facts as a stub records them, to lay over the stub needle's own facts. */
export async function coldFacts(store: Store, blobId: string, f: NeedleFactsInfo) {
  const s = await readStub(store, blobId, f);
  return {
    size: s.size,
    sha256: s.sha256,
    contentType: s.contentType,
    fileName: s.fileName,
    // The full needle's CRC32C is not kept: the stripe's shards carry their own.
    crc32c: 0,
    ...(s.ref ? { cold: s.ref } : {}),
  };
}

/**
 * Writes the stub of a cold blob from a Write header with `cold` (service.ts has
 * checked the id, term and stamp): refuses a bad ColdRef, a missing SHA-256, bad
 * metadata or any chunk; then appends the stub with keep_stamp semantics (a
 * newer needle here is kept and answered instead — the caller compares stamps).
 */
export async function writeStub(
  store: Store,
  storeId: string,
  h: WriteHeader,
  stamp: number,
  rest: AsyncIterator<unknown>,
): Promise<WriteResponse> {
  const ref = h.cold as ColdRef;
  if (h.sha256.length !== 32)
    throw new InvalidArgumentError("a cold stub needs the blob's sha256 (32 bytes)");
  const bad =
    checkColdRef(ref, h.size) ??
    checkMetaField('content_type', h.contentType) ??
    checkMetaField('file_name', h.fileName);
  if (bad) throw new InvalidArgumentError(bad);
  if (!(await rest.next()).done) throw new InvalidArgumentError('no chunks may follow a cold stub header');
  const bytes = encodeStub({
    ref,
    size: h.size,
    sha256: h.sha256,
    contentType: h.contentType,
    fileName: h.fileName,
  });
  const w = await store.beginWrite(h.blobId, h.cookie, bytes.length, {
    contentType: STUB_CONTENT_TYPE,
    fileName: '',
    stamp,
    keepStamp: true,
  });
  try {
    if (!w.kept) await w.write(bytes);
    const r = await w.commit();
    return create(WriteResponseSchema, {
      blobId: h.blobId,
      size: BigInt(r.size),
      sha256: r.sha256,
      crc32c: r.crc32c,
      replicas: [{ storeId, volumeId: r.volumeId, offset: BigInt(r.offset) }],
      cookie: r.cookie,
      writtenAtMs: BigInt(r.writtenAtMs),
    });
  } catch (err) {
    await w.abort().catch(() => {});
    throw err;
  }
}
