/**
 * The page token of ListPlacementGroup: an opaque, URL-safe encoding of a
 * position in a group listing (id hash, last id). The order it refers to
 * depends on ids alone, so a token stays valid across compaction and restarts.
 *
 *   base64url( version u8 = 1 | hashHi u32 BE | hashLo u32 BE | id bytes (ASCII, ≤ 255) )
 */
import type { GroupCursor } from './store-list.js';

const VERSION = 1;
// Blob id characters, plus DEL (the "after every id" marker).
const ID_CHARS = /^[A-Za-z0-9._~\u007f-]{1,255}$/;

export function encodeGroupCursor(c: GroupCursor): string {
  const buf = Buffer.alloc(9 + c.key.length);
  buf[0] = VERSION;
  buf.writeUInt32BE(c.hashHi >>> 0, 1);
  buf.writeUInt32BE(c.hashLo >>> 0, 5);
  buf.write(c.key, 9, 'latin1');
  return buf.toString('base64url');
}

/** The cursor in `token`, or a message saying why the token is not one of ours. */
export function decodeGroupCursor(token: string): GroupCursor | string {
  if (token.length > 400 || !/^[A-Za-z0-9_-]+$/.test(token))
    return 'page_token is not a token this store issued';
  const buf = Buffer.from(token, 'base64url');
  if (buf.length < 10 || buf[0] !== VERSION) return 'page_token is not a token this store issued';
  const key = buf.subarray(9).toString('latin1');
  if (!ID_CHARS.test(key)) return 'page_token is not a token this store issued';
  return { hashHi: buf.readUInt32BE(1), hashLo: buf.readUInt32BE(5), key };
}
