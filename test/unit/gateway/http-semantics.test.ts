import { Code, ConnectError } from '@connectrpc/connect';
import { describe, expect, it } from 'vitest';
import { contentDisposition } from '../../../internal/gateway/http.js';
import { evaluatePreconditions, selectRange } from '../../../internal/gateway/http-conditional.js';
import { decodeSegment, HttpError, httpErrorOf } from '../../../internal/gateway/http-errors.js';
import { requestFileName, requestSha256 } from '../../../internal/gateway/http-upload.js';

const ETAG = '"abc"';
const LM = Date.UTC(2026, 0, 2, 3, 4, 5, 678); // Last-Modified shows 03:04:05
const v = { etag: ETAG, lastModifiedMs: LM };
const date = (ms: number) => new Date(ms).toUTCString();

describe('RFC 9110 §13: preconditions of GET/HEAD, in the RFC order', () => {
  it('If-Match: strong comparison; * matches; no match → 412', () => {
    expect(evaluatePreconditions({ 'if-match': ETAG }, v)).toBe('proceed');
    expect(evaluatePreconditions({ 'if-match': '"x", "abc"' }, v)).toBe('proceed');
    expect(evaluatePreconditions({ 'if-match': '*' }, v)).toBe('proceed');
    expect(evaluatePreconditions({ 'if-match': '"x"' }, v)).toBe(412);
    expect(evaluatePreconditions({ 'if-match': 'W/"abc"' }, v)).toBe(412); // weak never matches strongly
  });
  it('If-Unmodified-Since: modified after the date → 412; ignored when If-Match is present or the date is invalid', () => {
    expect(evaluatePreconditions({ 'if-unmodified-since': date(LM - 60_000) }, v)).toBe(412);
    expect(evaluatePreconditions({ 'if-unmodified-since': date(LM) }, v)).toBe('proceed');
    expect(evaluatePreconditions({ 'if-match': ETAG, 'if-unmodified-since': date(LM - 60_000) }, v)).toBe(
      'proceed',
    );
    expect(evaluatePreconditions({ 'if-unmodified-since': 'yesterday' }, v)).toBe('proceed');
  });
  it('If-None-Match: weak comparison; a match → 304', () => {
    expect(evaluatePreconditions({ 'if-none-match': ETAG }, v)).toBe(304);
    expect(evaluatePreconditions({ 'if-none-match': 'W/"abc"' }, v)).toBe(304);
    expect(evaluatePreconditions({ 'if-none-match': '*' }, v)).toBe(304);
    expect(evaluatePreconditions({ 'if-none-match': '"x"' }, v)).toBe('proceed');
  });
  it('If-Modified-Since: the Last-Modified just served → 304 (second precision); earlier → 200', () => {
    expect(evaluatePreconditions({ 'if-modified-since': date(LM) }, v)).toBe(304);
    expect(evaluatePreconditions({ 'if-modified-since': date(LM + 3_600_000) }, v)).toBe(304);
    expect(evaluatePreconditions({ 'if-modified-since': date(LM - 1000) }, v)).toBe('proceed');
    expect(evaluatePreconditions({ 'if-modified-since': 'not a date' }, v)).toBe('proceed');
  });
  it('If-None-Match takes precedence over If-Modified-Since', () => {
    expect(evaluatePreconditions({ 'if-none-match': '"x"', 'if-modified-since': date(LM) }, v)).toBe(
      'proceed',
    );
  });
  it('If-Match failing wins over If-None-Match matching (412 before 304)', () => {
    expect(evaluatePreconditions({ 'if-match': '"x"', 'if-none-match': ETAG }, v)).toBe(412);
  });
});

describe('RFC 9110 §14: ranges of a GET', () => {
  const r = (range: string | undefined, size: number, extra: Record<string, string> = {}) =>
    selectRange({ ...(range === undefined ? {} : { range }), ...extra }, size, v);
  it('single byte ranges', () => {
    expect(r(undefined, 100)).toBeNull();
    expect(r('bytes=0-9', 100)).toEqual({ start: 0, end: 9 });
    expect(r('bytes=90-', 100)).toEqual({ start: 90, end: 99 });
    expect(r('bytes=-10', 100)).toEqual({ start: 90, end: 99 });
    expect(r('bytes=-500', 100)).toEqual({ start: 0, end: 99 });
    expect(r('bytes=50-500', 100)).toEqual({ start: 50, end: 99 });
  });
  it('an invalid range (last < first, junk, another unit, several ranges) is ignored: 200 whole', () => {
    expect(r('bytes=5-2', 100)).toBeNull();
    expect(r('bytes=-x-5', 100)).toBeNull();
    expect(r('items=0-1', 100)).toBeNull();
    expect(r('bytes=0-1,5-6', 100)).toBeNull();
    expect(r('bytes=-', 100)).toBeNull();
  });
  it('unsatisfiable: first byte at or past the end, or a zero suffix → 416', () => {
    expect(r('bytes=100-', 100)).toBe('unsatisfiable');
    expect(r('bytes=100-200', 100)).toBe('unsatisfiable');
    expect(r('bytes=-0', 100)).toBe('unsatisfiable');
    expect(r('bytes=0-', 0)).toBe('unsatisfiable');
  });
  it('a suffix range of an empty blob is satisfiable but empty: 200 with the (empty) body', () => {
    expect(r('bytes=-5', 0)).toBeNull();
  });
  it('If-Range: a strong ETag or the exact Last-Modified keeps the range; anything else → 200 whole', () => {
    expect(r('bytes=0-9', 100, { 'if-range': ETAG })).toEqual({ start: 0, end: 9 });
    expect(r('bytes=0-9', 100, { 'if-range': '"old"' })).toBeNull();
    expect(r('bytes=0-9', 100, { 'if-range': 'W/"abc"' })).toBeNull();
    expect(r('bytes=0-9', 100, { 'if-range': date(LM) })).toEqual({ start: 0, end: 9 });
    expect(r('bytes=0-9', 100, { 'if-range': date(LM - 1000) })).toBeNull();
  });
});

describe('decoding and error mapping', () => {
  it('a malformed percent-encoding is a 400 with a message, never a throw of URIError', () => {
    for (const bad of ['%', '%ZZ', '%E0%A4%A', 'a%2']) {
      let e: unknown;
      try {
        decodeSegment(bad);
      } catch (err) {
        e = err;
      }
      expect(e).toBeInstanceOf(HttpError);
      expect((e as HttpError).status).toBe(400);
      expect((e as HttpError).message).toContain('percent-encoding');
    }
    expect(decodeSegment('a%20b')).toBe('a b');
  });
  it('maps gRPC codes to RFC 9110 statuses once', () => {
    const s = (c: Code) => httpErrorOf(new ConnectError('x', c)).status;
    expect(s(Code.InvalidArgument)).toBe(400);
    expect(s(Code.NotFound)).toBe(404);
    expect(s(Code.AlreadyExists)).toBe(409);
    expect(s(Code.FailedPrecondition)).toBe(409);
    expect(s(Code.PermissionDenied)).toBe(403);
    expect(s(Code.Unauthenticated)).toBe(401);
    expect(s(Code.ResourceExhausted)).toBe(429);
    expect(s(Code.Unavailable)).toBe(503);
    expect(httpErrorOf(new ConnectError('x', Code.Unavailable)).headers['retry-after']).toBe('1');
    expect(s(Code.Internal)).toBe(500);
    expect(httpErrorOf(new HttpError(411, 'len')).status).toBe(411);
  });
  it('file names: Content-Disposition in (RFC 6266 / 8187) and out', () => {
    expect(requestFileName('attachment; filename="cat.jpg"')).toBe('cat.jpg');
    expect(requestFileName('attachment; filename*=UTF-8\'\'%C3%A9t%C3%A9.png; filename="ete.png"')).toBe(
      'été.png',
    );
    expect(requestFileName('attachment; filename="C:\\\\photos\\\\dog.jpg"')).toBe('dog.jpg');
    expect(requestFileName(undefined)).toBe('');
    expect(contentDisposition('été "1".png')['content-disposition']).toBe(
      `inline; filename="_t_ _1_.png"; filename*=UTF-8''%C3%A9t%C3%A9%20%221%22.png`,
    );
    expect(contentDisposition('')).toEqual({});
  });
  it('Content-Digest sha-256 (RFC 9530) as hex', () => {
    const hex = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';
    const b64 = Buffer.from(hex, 'hex').toString('base64');
    expect(requestSha256(`sha-256=:${b64}:`)).toBe(hex);
    expect(requestSha256(undefined)).toBe('');
    expect(() => requestSha256('sha-256=:AAAA:')).toThrow(HttpError);
  });
});
