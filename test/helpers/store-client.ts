import { create } from '@bufbuild/protobuf';
import { type Client, createClient } from '@connectrpc/connect';
import type { StoreTarget } from '../../gen/haystack/v1/common_pb.js';
import {
  StoreService,
  type WriteRequest,
  WriteRequestSchema,
  type WriteResponse,
} from '../../gen/haystack/v1/store_pb.js';
import { createDirectGrpcTransport } from '../../internal/rpc/direct-transport.js';
import { clientSecurity, peerTransport } from '../../internal/rpc/transport.js';
import type { TransportSecurity } from '../../internal/security/tls-config.js';

export type StoreClient = Client<typeof StoreService>;

/**
 * A StoreService client over connect-node's gRPC transport, or (direct) the
 * lean one the servers use; mTLS as the test's gateway unless `security` says
 * otherwise (see test/helpers/pki.ts).
 */
export function storeClient(
  address: string,
  o: { direct?: boolean; security?: TransportSecurity } = {},
): StoreClient {
  const security = o.security ?? clientSecurity();
  return createClient(
    StoreService,
    o.direct
      ? createDirectGrpcTransport({ address, security })
      : peerTransport(address, ['store'], {}, security),
  );
}

export interface WriteOptions {
  cookie?: bigint;
  sha256?: Uint8Array;
  forwardTo?: Array<Pick<StoreTarget, 'storeId' | 'address'>>;
  /** Declared size (default: data.length). */
  size?: number;
  chunkSize?: number;
  /** Stop sending after this many bytes (a short stream). */
  truncateAt?: number;
  term?: bigint;
  contentType?: string;
  fileName?: string;
  /** A stamp for the needle, as a forwarding store sends it. */
  writtenAtMs?: bigint;
  /** The call's deadline (DEADLINE_EXCEEDED after it); none by default. */
  timeoutMs?: number;
}

export async function writeBlob(
  client: StoreClient,
  blobId: string,
  data: Uint8Array,
  o: WriteOptions = {},
): Promise<WriteResponse> {
  const chunk = o.chunkSize ?? 64 * 1024;
  const end = o.truncateAt ?? data.length;
  async function* msgs(): AsyncGenerator<WriteRequest> {
    yield create(WriteRequestSchema, {
      msg: {
        case: 'header',
        value: {
          blobId,
          cookie: o.cookie ?? 0n,
          size: BigInt(o.size ?? data.length),
          sha256: o.sha256 ?? new Uint8Array(),
          forwardTo: (o.forwardTo ?? []).map((t) => ({ storeId: t.storeId, address: t.address, zone: '' })),
          term: o.term ?? 0n,
          contentType: o.contentType ?? '',
          fileName: o.fileName ?? '',
          writtenAtMs: o.writtenAtMs ?? 0n,
        },
      },
    });
    for (let i = 0; i < end; i += chunk) {
      yield create(WriteRequestSchema, {
        msg: { case: 'chunk', value: data.subarray(i, Math.min(end, i + chunk)) },
      });
    }
  }
  return client.write(msgs(), o.timeoutMs === undefined ? undefined : { timeoutMs: o.timeoutMs });
}

export async function readBlob(
  client: StoreClient,
  blobId: string,
  o: { offset?: number; length?: number; cookie?: bigint; timeoutMs?: number } = {},
): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  let header = false;
  for await (const msg of client.read(
    {
      blobId,
      cookie: o.cookie ?? 0n,
      offset: BigInt(o.offset ?? 0),
      length: BigInt(o.length ?? 0),
    },
    o.timeoutMs === undefined ? undefined : { timeoutMs: o.timeoutMs },
  )) {
    if (msg.msg.case === 'header') header = true;
    else if (msg.msg.case === 'chunk') parts.push(msg.msg.value);
  }
  if (!header) throw new Error('Read stream carried no header');
  const only = parts.length === 1 ? parts[0]! : undefined;
  return only ? Buffer.from(only.buffer, only.byteOffset, only.byteLength) : Buffer.concat(parts);
}

/** Deterministic pseudo-random bytes (xorshift), so failures reproduce. */
export function bytes(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/**
 * Byte equality for large buffers (vitest's deep equality walks them element by
 * element); says where the first difference is.
 */
export function sameBytes(actual: Uint8Array, expected: Uint8Array): string {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (a.equals(b)) return 'identical';
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return `differ: lengths ${a.length} vs ${b.length}, first difference at byte ${i}`;
}
