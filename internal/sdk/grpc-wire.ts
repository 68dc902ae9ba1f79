import type { IncomingHttpHeaders } from 'node:http2';
import {
  type DescMessage,
  fromBinary,
  type Message,
  type MessageShape,
  ScalarType,
  toBinary,
} from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';

/**
 * gRPC over HTTP/2 wire details shared by the direct server and transport
 * (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md): the 5-byte
 * message prefix, grpc-timeout, grpc-message percent-encoding, and the codes a
 * broken HTTP/2 stream maps to.
 */

/** Compressed-flag (1 byte) + big-endian length (4 bytes). */
export const PREFIX_SIZE = 5;

/** Frames one serialized message; one allocation, no copy of the caller's bytes later. */
export function frameMessage(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(PREFIX_SIZE + payload.byteLength);
  out[0] = 0;
  out.writeUInt32BE(payload.byteLength, 1);
  out.set(payload, PREFIX_SIZE);
  return out;
}

/**
 * Messages whose fields all belong to one oneof (ReadResponse, WriteRequest:
 * header | chunk). When such a message carries a bytes member, its encoding is
 * just tag, length and the bytes, written straight into the frame: one copy of
 * the blob chunk instead of protobuf-es's writer plus the framing copy.
 */
interface BytesOneofPlan {
  oneof: string;
  /** Bytes members: local name -> field number. */
  fields: Map<string, number>;
}

const plans = new WeakMap<DescMessage, BytesOneofPlan | null>();

function planFor(schema: DescMessage): BytesOneofPlan | null {
  let plan = plans.get(schema);
  if (plan !== undefined) return plan;
  plan = null;
  const oneof = schema.oneofs.length === 1 ? schema.oneofs[0]! : undefined;
  if (oneof && schema.fields.every((f) => f.oneof === oneof)) {
    const fields = new Map<string, number>();
    for (const f of oneof.fields) {
      if (f.fieldKind === 'scalar' && f.scalar === ScalarType.BYTES) fields.set(f.localName, f.number);
    }
    if (fields.size > 0) plan = { oneof: oneof.localName, fields };
  }
  plans.set(schema, plan);
  return plan;
}

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

function writeVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[at++] = n;
  return at;
}

/** Serializes and frames one message (see BytesOneofPlan for the shortcut). */
export function encodeFrame(schema: DescMessage, msg: Message): Buffer {
  const plan = planFor(schema);
  if (plan && !msg.$unknown?.length) {
    const member = (msg as unknown as Record<string, { case?: string; value?: unknown }>)[plan.oneof];
    const number = member?.case === undefined ? undefined : plan.fields.get(member.case);
    const data = member?.value;
    if (number !== undefined && data instanceof Uint8Array) {
      const tag = (number << 3) | 2;
      const payload = varintSize(tag) + varintSize(data.length) + data.length;
      const out = Buffer.allocUnsafe(PREFIX_SIZE + payload);
      out[0] = 0;
      out.writeUInt32BE(payload, 1);
      const at = writeVarint(out, writeVarint(out, PREFIX_SIZE, tag), data.length);
      out.set(data, at);
      return out;
    }
  }
  return frameMessage(toBinary(schema, msg));
}

/**
 * Decodes one request message (protobuf binary). Bytes that are not the method's
 * message are the caller's fault: INVALID_ARGUMENT naming the message type and the
 * decoder's reason. The one request decoder of both server paths: the direct gRPC
 * path decodes with it, and internal/server/decode-guard.ts checks with it what
 * connect-node is about to decode (Connect, gRPC-Web), whose own parse failures
 * say INTERNAL.
 */
export function decodeRequest<D extends DescMessage>(schema: D, bytes: Uint8Array): MessageShape<D> {
  try {
    return fromBinary(schema, bytes);
  } catch (err) {
    throw new ConnectError(
      `cannot decode the request message (${schema.typeName}): ${err instanceof Error ? err.message : String(err)}`,
      Code.InvalidArgument,
    );
  }
}

export class FrameError extends Error {
  constructor(
    message: string,
    readonly code: Code,
    /** For a message over the size limit: the length its prefix declared (bytes, prefix excluded). */
    readonly declaredBytes?: number,
  ) {
    super(message);
  }
}

/**
 * Reassembles length-prefixed messages from arbitrary HTTP/2 DATA chunks. A
 * message inside one chunk is returned as a view of it (no copy); a message
 * split across chunks is copied once, when its last byte has arrived.
 */
export class FrameParser {
  private parts: Buffer[] = [];
  private buffered = 0;
  /** Length of the message being reassembled (prefix included); 0 until its prefix is known. */
  private need = 0;

  constructor(private readonly maxMessageBytes: number) {}

  /** Bytes received but not yet returned as a message (a partial message). */
  get pending(): number {
    return this.buffered;
  }

  /** Feeds one chunk; returns the messages it completed, in order. */
  push(chunk: Buffer): Uint8Array[] {
    const out: Uint8Array[] = [];
    let buf = chunk;
    if (this.buffered > 0) {
      this.parts.push(chunk);
      this.buffered += chunk.length;
      if (this.need === 0 && this.buffered >= PREFIX_SIZE) {
        this.need = PREFIX_SIZE + this.checkPrefix(Buffer.concat(this.parts, PREFIX_SIZE), 0);
      }
      if (this.need === 0 || this.buffered < this.need) return out;
      buf = Buffer.concat(this.parts, this.buffered);
      this.parts = [];
      this.buffered = 0;
      this.need = 0;
    }
    let at = 0;
    while (buf.length - at >= PREFIX_SIZE) {
      const len = this.checkPrefix(buf, at);
      if (buf.length - at - PREFIX_SIZE < len) {
        this.need = PREFIX_SIZE + len;
        break;
      }
      out.push(buf.subarray(at + PREFIX_SIZE, at + PREFIX_SIZE + len));
      at += PREFIX_SIZE + len;
    }
    if (at < buf.length) {
      const rest = buf.subarray(at);
      this.parts.push(rest);
      this.buffered = rest.length;
    }
    return out;
  }

  /** The message length in the prefix at `at`, after checking flags and the size limit. */
  private checkPrefix(buf: Buffer, at: number): number {
    if (buf[at]! & 1) {
      throw new FrameError(
        'compressed messages need grpc-encoding, which this endpoint does not use',
        Code.Internal,
      );
    }
    const len = buf.readUInt32BE(at + 1);
    if (len > this.maxMessageBytes) {
      throw new FrameError(
        `message of ${len} bytes is larger than the limit of ${this.maxMessageBytes} bytes`,
        Code.ResourceExhausted,
        len,
      );
    }
    return len;
  }
}

const TIMEOUT_UNITS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

/** Parses a grpc-timeout header ("100m", "5S"); undefined when absent, NaN when malformed. */
export function parseTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (!m) return Number.NaN;
  return Number(m[1]) * TIMEOUT_UNITS[m[2]!]!;
}

/** Formats milliseconds as a grpc-timeout header (at most 8 digits). */
export function formatTimeout(ms: number): string {
  const whole = Math.max(0, Math.ceil(ms));
  for (const unit of ['m', 'S', 'M', 'H'] as const) {
    const n = Math.ceil(whole / TIMEOUT_UNITS[unit]!);
    if (n < 1e8) return `${n}${unit}`;
  }
  return '99999999H';
}

/** grpc-message is percent-encoded UTF-8: printable ASCII except '%' passes as is. */
export function encodeGrpcMessage(message: string): string {
  let out = '';
  for (const byte of Buffer.from(message, 'utf8')) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

export function decodeGrpcMessage(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** The gRPC code of a stream that ended without a grpc-status, from its HTTP status. */
export function codeFromHttpStatus(status: number): Code {
  switch (status) {
    case 400:
      return Code.Internal;
    case 401:
      return Code.Unauthenticated;
    case 403:
      return Code.PermissionDenied;
    case 404:
      return Code.Unimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return Code.Unavailable;
    default:
      return Code.Unknown;
  }
}

/** HTTP/2 error codes (RFC 9113 §7) a reset stream carries, as gRPC codes. */
export function codeFromRstCode(rst: number): Code {
  switch (rst) {
    case 0x7: // REFUSED_STREAM: never processed, safe to retry
      return Code.Unavailable;
    case 0x8: // CANCEL
      return Code.Canceled;
    case 0xb: // ENHANCE_YOUR_CALM
      return Code.ResourceExhausted;
    case 0xc: // INADEQUATE_SECURITY
      return Code.PermissionDenied;
    default:
      return Code.Internal;
  }
}

/** HTTP/2 headers (or trailers) as web Headers, without pseudo-headers. */
export function toHeaders(h: IncomingHttpHeaders): Headers {
  const out = new Headers();
  for (const [k, v] of Object.entries(h)) {
    if (k.startsWith(':') || v === undefined) continue;
    if (Array.isArray(v)) for (const x of v) out.append(k, x);
    else out.set(k, String(v));
  }
  return out;
}
