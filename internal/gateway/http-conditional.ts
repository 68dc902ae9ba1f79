/**
 * RFC 9110 §13 (conditional requests) and §14 (range requests) for a stored blob, as pure
 * functions of the request headers and the blob's validators. A blob never changes once
 * written, so its ETag (the quoted SHA-256) is a strong validator; Last-Modified is its
 * creation time at one-second precision.
 */

export interface Validators {
  /** Quoted strong entity tag, e.g. `"e3b0…"`. */
  etag: string;
  /** Creation time, ms since the epoch. */
  lastModifiedMs: number;
}

/** The request headers that matter here (lower-case names, as Node gives them). */
export interface ConditionalHeaders {
  'if-match'?: string;
  'if-none-match'?: string;
  'if-modified-since'?: string;
  'if-unmodified-since'?: string;
  'if-range'?: string;
  range?: string;
}

/** The second Last-Modified shows (HTTP-dates have no milliseconds). */
const lastModifiedSecond = (v: Validators) => Math.floor(v.lastModifiedMs / 1000) * 1000;

/** An HTTP-date (RFC 9110 §5.6.7) in ms, or undefined when it is not one (then it is ignored). */
function httpDate(text: string | undefined): number | undefined {
  if (!text) return undefined;
  const ms = Date.parse(text);
  return Number.isFinite(ms) ? ms : undefined;
}

/** Entity tags of an If-Match / If-None-Match list; '*' as is. */
function tags(list: string): string[] {
  return list
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean);
}

/** §8.8.3.2: strong comparison (both strong, same opaque tag). */
const strongMatch = (tag: string, etag: string) => !tag.startsWith('W/') && tag === etag;
/** §8.8.3.2: weak comparison (opaque tags equal, W/ ignored). */
const weakMatch = (tag: string, etag: string) => tag.replace(/^W\//, '') === etag.replace(/^W\//, '');

/**
 * §13.2.2: evaluates the preconditions of a GET or HEAD in the RFC's order:
 *  1. If-Match (strong) — false → 412;
 *  2. else If-Unmodified-Since — modified after it → 412;
 *  3. If-None-Match (weak) — a match → 304;
 *  4. else If-Modified-Since — not modified since → 304.
 * An invalid date is ignored (§13.1.3, §13.1.4).
 * @returns 'proceed', 304 or 412.
 */
export function evaluatePreconditions(h: ConditionalHeaders, v: Validators): 'proceed' | 304 | 412 {
  const ifMatch = h['if-match'];
  if (ifMatch !== undefined) {
    const list = tags(ifMatch);
    if (!list.some((t) => t === '*' || strongMatch(t, v.etag))) return 412;
  } else {
    const ius = httpDate(h['if-unmodified-since']);
    if (ius !== undefined && lastModifiedSecond(v) > ius) return 412;
  }
  const inm = h['if-none-match'];
  if (inm !== undefined) {
    const list = tags(inm);
    if (list.some((t) => t === '*' || weakMatch(t, v.etag))) return 304;
  } else {
    const ims = httpDate(h['if-modified-since']);
    if (ims !== undefined && lastModifiedSecond(v) <= ims) return 304;
  }
  return 'proceed';
}

/** A single satisfiable byte range, inclusive. */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * §14.2: the byte range a GET of a `size`-byte blob should answer.
 *  - no Range, another unit, several ranges, or an invalid one (`5-2`, junk): null → 200 whole
 *    (a server may ignore Range; an invalid ranges-specifier is ignored);
 *  - If-Range that does not match (§13.1.5: a strong ETag, or exactly the Last-Modified date):
 *    null → 200 whole;
 *  - unsatisfiable (§14.1.1: first-pos ≥ size, or a zero suffix): 'unsatisfiable' → 416 whose
 *    Content-Range gives the size (§14.4);
 *  - a suffix range of an empty blob is satisfiable but has no bytes to send: null → 200 empty.
 * Only GET has range semantics: callers pass no Range for HEAD.
 */
export function selectRange(
  h: ConditionalHeaders,
  size: number,
  v: Validators,
): ByteRange | 'unsatisfiable' | null {
  const header = h.range;
  if (!header) return null;
  const ifRange = h['if-range'];
  if (ifRange !== undefined) {
    const t = ifRange.trim();
    const matches =
      t.startsWith('"') || t.startsWith('W/')
        ? strongMatch(t, v.etag)
        : httpDate(t) === lastModifiedSecond(v);
    if (!matches) return null;
  }
  const m = /^bytes=(\d*)-(\d*)$/i.exec(header.trim());
  if (!m) return null;
  const [, a = '', b = ''] = m;
  if (a === '' && b === '') return null;
  if (a === '') {
    const n = Number(b);
    if (n === 0) return 'unsatisfiable';
    if (size === 0) return null;
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(a);
  if (b !== '' && Number(b) < start) return null; // invalid: last-pos < first-pos
  if (start >= size) return 'unsatisfiable';
  return { start, end: b === '' ? size - 1 : Math.min(Number(b), size - 1) };
}
