import { create, toBinary } from '@bufbuild/protobuf';
import { Code } from '@connectrpc/connect';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HealthCheckRequestSchema } from '../../gen/grpc/health/v1/health_pb.js';
import { ReadResponseSchema, WriteRequestSchema } from '../../gen/haystack/v1/store_pb.js';
import {
  decodeGrpcMessage,
  encodeFrame,
  encodeGrpcMessage,
  FrameError,
  FrameParser,
  formatTimeout,
  frameMessage,
  parseTimeout,
} from '../../internal/sdk/grpc-wire.js';

describe('FrameParser', () => {
  it('returns the same messages however the stream is cut into chunks', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 12 }),
        fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 40 }),
        (messages, cuts) => {
          const wire = Buffer.concat(messages.map((m) => frameMessage(m)));
          const parser = new FrameParser(1000);
          const got: Uint8Array[] = [];
          let at = 0;
          for (let i = 0; at < wire.length; i++) {
            const n = cuts[i % cuts.length]!;
            got.push(...parser.push(wire.subarray(at, at + n)));
            at += n;
          }
          expect(parser.pending).toBe(0);
          expect(got.map((g) => Buffer.from(g).toString('hex'))).toEqual(
            messages.map((m) => Buffer.from(m).toString('hex')),
          );
        },
      ),
    );
  });

  it('keeps a partial message pending', () => {
    const parser = new FrameParser(100);
    expect(parser.push(frameMessage(new Uint8Array(10)).subarray(0, 7))).toEqual([]);
    expect(parser.pending).toBe(7);
  });

  it('rejects messages over the limit and compressed messages with their codes', () => {
    const big = new FrameParser(10);
    expect(() => big.push(frameMessage(new Uint8Array(11)))).toThrow(FrameError);
    try {
      new FrameParser(10).push(frameMessage(new Uint8Array(11)).subarray(0, 3));
      new FrameParser(10).push(frameMessage(new Uint8Array(11)));
    } catch (err) {
      expect((err as FrameError).code).toBe(Code.ResourceExhausted);
    }
    const compressed = frameMessage(new Uint8Array(2));
    compressed[0] = 1;
    try {
      new FrameParser(10).push(compressed);
      expect.unreachable();
    } catch (err) {
      expect((err as FrameError).code).toBe(Code.Internal);
    }
  });
});

describe('grpc-timeout', () => {
  it('parses every unit and rejects malformed values', () => {
    expect(parseTimeout(undefined)).toBeUndefined();
    expect(parseTimeout('1H')).toBe(3_600_000);
    expect(parseTimeout('2M')).toBe(120_000);
    expect(parseTimeout('3S')).toBe(3000);
    expect(parseTimeout('150m')).toBe(150);
    expect(parseTimeout('2000u')).toBe(2);
    expect(parseTimeout('5000000n')).toBe(5);
    expect(parseTimeout('123456789m')).toBeNaN();
    expect(parseTimeout('-1m')).toBeNaN();
    expect(parseTimeout('10')).toBeNaN();
  });
  it('formats within 8 digits and round-trips', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 10 ** 13 }), (ms) => {
        const back = parseTimeout(formatTimeout(ms))!;
        expect(back).toBeGreaterThanOrEqual(ms);
        // Rounded up to the unit that fits: never shorter, at most a millionth longer.
        expect(back - ms).toBeLessThanOrEqual(Math.max(1, ms * 1e-6));
      }),
    );
  });
});

describe('grpc-message', () => {
  it('percent-encodes what is not printable ASCII, and decodes back', () => {
    expect(encodeGrpcMessage('blob "a" not found: 100%')).toBe('blob "a" not found: 100%25');
    expect(encodeGrpcMessage('naïve\n')).toBe('na%C3%AFve%0A');
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme' }), (s) => {
        const encoded = encodeGrpcMessage(s);
        expect(/^[\x20-\x7e]*$/.test(encoded)).toBe(true);
        expect(decodeGrpcMessage(encoded)).toBe(s);
      }),
    );
  });
});

describe('encodeFrame', () => {
  it('writes exactly what protobuf-es plus framing writes, for chunk and header messages alike', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 70_000 }), fc.string(), fc.boolean(), (data, id, chunk) => {
        const w = create(WriteRequestSchema, {
          msg: chunk ? { case: 'chunk', value: data } : { case: 'header', value: { blobId: id, size: 7n } },
        });
        expect(encodeFrame(WriteRequestSchema, w).equals(frameMessage(toBinary(WriteRequestSchema, w)))).toBe(
          true,
        );
        const r = create(ReadResponseSchema, { msg: { case: 'chunk', value: data } });
        expect(encodeFrame(ReadResponseSchema, r).equals(frameMessage(toBinary(ReadResponseSchema, r)))).toBe(
          true,
        );
      }),
      { numRuns: 50 },
    );
    const empty = create(ReadResponseSchema, {});
    expect(
      encodeFrame(ReadResponseSchema, empty).equals(frameMessage(toBinary(ReadResponseSchema, empty))),
    ).toBe(true);
    const other = create(HealthCheckRequestSchema, { service: 'x' });
    expect(
      encodeFrame(HealthCheckRequestSchema, other).equals(
        frameMessage(toBinary(HealthCheckRequestSchema, other)),
      ),
    ).toBe(true);
  });
});
