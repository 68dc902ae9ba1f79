/**
 * Building a browser upload: the SHA-256 of the content (Web Crypto when the
 * platform has it) and the binary Put request that carries it. Kept apart from
 * the client so a Web Worker can import just this (the dashboard hashes and
 * encodes off the main thread, then hands the bytes to `putEncoded`).
 */
import { create, toBinary } from '@bufbuild/protobuf';
import { PutRequestSchema } from '../../gen/haystack/v1/blob_pb.js';
import { Sha256 } from './sha256.js';

/** The part of Web Crypto used here (the SDK compiles without the DOM library). */
interface SubtleDigest {
  digest(algorithm: 'SHA-256', data: Uint8Array): Promise<ArrayBuffer>;
}

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

/**
 * SHA-256 of `data` as lower-case hex: `crypto.subtle.digest` (native, ~0.1 s for
 * 60 MiB) when available — secure contexts and localhost — else the portable one.
 */
export async function sha256Hex(data: Uint8Array): Promise<string> {
  const subtle = (globalThis as { crypto?: { subtle?: SubtleDigest } }).crypto?.subtle;
  if (subtle) return hex(new Uint8Array(await subtle.digest('SHA-256', data)));
  const h = new Sha256();
  h.update(data);
  return h.hex();
}

export interface PutFields {
  /** Blob id; default: the content's SHA-256. */
  id?: string;
  contentType?: string;
  /** Replicas wanted; 0: the cluster default. */
  replicaCount?: number;
}

/** A `haystack.v1.PutRequest` in the protobuf binary encoding (application/proto). */
export function encodePutRequest(data: Uint8Array, sha256: string, f: PutFields = {}): Uint8Array {
  return toBinary(
    PutRequestSchema,
    create(PutRequestSchema, {
      blobId: f.id ?? sha256,
      data,
      contentType: f.contentType ?? '',
      replicaCount: f.replicaCount ?? 0,
    }),
  );
}
