/**
 * The content of a cold stub (cold-stub.ts): a ColdStub message in a needle of
 * the blob's own id, marked by STUB_CONTENT_TYPE. Decoding is here, apart from
 * the stub's reads and writes, so the write path (store-write.ts) can tell a
 * stub's blob facts without a cycle through cold-stub.ts.
 */
import { fromBinary } from '@bufbuild/protobuf';
import { type ColdStub, ColdStubSchema } from '../../gen/haystack/v1/store_pb.js';
import { STUB_CONTENT_TYPE } from '../common/shard-key.js';
import { ChecksumError } from './errors.js';
import type { NeedleFactsInfo } from './store-core.js';

/** A stub's content is a few hundred bytes; anything larger is not a stub this code wrote. */
export const MAX_STUB_BYTES = 4096;

export function isStub(f: Pick<NeedleFactsInfo, 'contentType' | 'deleted'>): boolean {
  return !f.deleted && f.contentType === STUB_CONTENT_TYPE;
}

/**
 * The ColdStub in the content `chunks` of the stub needle `f` of `blobId`;
 * ChecksumError (DATA_LOSS for this copy) when it is too large or does not decode.
 */
export async function decodeStub(
  blobId: string,
  f: Pick<NeedleFactsInfo, 'size' | 'volumeId'>,
  chunks: () => AsyncIterable<Uint8Array>,
): Promise<ColdStub> {
  if (f.size > MAX_STUB_BYTES) {
    throw new ChecksumError(
      `stub of ${blobId} is ${f.size} bytes, more than a stub's ${MAX_STUB_BYTES}`,
      'header-field',
      f.volumeId,
      0,
    );
  }
  const parts: Uint8Array[] = [];
  for await (const c of chunks()) parts.push(c);
  try {
    return fromBinary(ColdStubSchema, Buffer.concat(parts));
  } catch (err) {
    throw new ChecksumError(
      `stub of ${blobId} does not decode: ${(err as Error).message}`,
      'header-field',
      f.volumeId,
      0,
    );
  }
}
