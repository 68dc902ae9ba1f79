import { createHash } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, createRouterTransport } from '@connectrpc/connect';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlobInfoSchema, BlobService, DownloadResponseSchema } from '../../../gen/haystack/v1/blob_pb.js';
import {
  AlreadyExistsError,
  HaystackClient,
  HaystackError,
  IntegrityError,
  isRetryable,
  NotFoundError,
  nodeHasher,
  ResourceExhaustedError,
  Sha256,
  toHaystackError,
  UnavailableError,
} from '../../../internal/sdk/index.js';
import { bytes } from '../../helpers/store-client.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('Sha256 (portable)', () => {
  it('matches node:crypto for any content split anywhere', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 600 }),
        fc.array(fc.nat(600), { maxLength: 5 }),
        (data, cuts) => {
          const h = new Sha256();
          let prev = 0;
          for (const c of [...cuts.map((x) => Math.min(x, data.length))].sort((a, b) => a - b)) {
            h.update(data.subarray(prev, Math.max(prev, c)));
            prev = Math.max(prev, c);
          }
          h.update(data.subarray(prev));
          expect(h.hex()).toBe(sha(data));
        },
      ),
      { numRuns: 300 },
    );
    const n = nodeHasher();
    n.update(new Uint8Array([1, 2, 3]));
    expect(n.hex()).toBe(sha(new Uint8Array([1, 2, 3])));
  });
});

describe('errors', () => {
  it('maps statuses to error classes with the code name', () => {
    const nf = toHaystackError(new ConnectError('blob x not found', Code.NotFound));
    expect(nf).toBeInstanceOf(NotFoundError);
    expect(nf.codeName).toBe('NOT_FOUND');
    expect(nf.message).toBe('blob x not found');
    expect(toHaystackError(new ConnectError('slow down', Code.ResourceExhausted))).toBeInstanceOf(
      ResourceExhaustedError,
    );
    expect(toHaystackError(new ConnectError('x', Code.Unavailable)).retryable).toBe(true);
    expect(isRetryable(new ConnectError('x', Code.Unavailable), false)).toBe(true);
    expect(
      isRetryable(
        new ConnectError('http/2 stream closed with error code NGHTTP2_INTERNAL_ERROR', Code.Internal),
        true,
      ),
    ).toBe(true);
    expect(isRetryable(new ConnectError('http/2 stream closed', Code.Internal), false)).toBe(false);
    expect(isRetryable(new ConnectError('bad id', Code.InvalidArgument), true)).toBe(false);
    expect(
      isRetryable(new ConnectError('http/2 stream closed with error code CANCEL (0x8)', Code.Canceled), true),
    ).toBe(true);
  });
});

/** A BlobService in memory, failing on demand. */
function fakeService(opts: { failFirst?: number; cutAfter?: number; corrupt?: boolean } = {}) {
  const blobs = new Map<string, { data: Uint8Array; ct: string }>();
  let failures = opts.failFirst ?? 0;
  let cuts = opts.cutAfter === undefined ? 0 : 1;
  const calls = { upload: 0, download: 0 };
  const info = (id: string) => {
    const b = blobs.get(id)!;
    return create(BlobInfoSchema, {
      blobId: id,
      size: BigInt(b.data.length),
      sha256: sha(b.data),
      contentType: b.ct,
      replicaCount: 3,
    });
  };
  const transport = createRouterTransport(({ service }) =>
    service(BlobService, {
      async upload(reqs) {
        calls.upload++;
        let id = '';
        let ct = '';
        let expected = '';
        const parts: Uint8Array[] = [];
        for await (const r of reqs) {
          if (r.msg.case === 'header') {
            id = r.msg.value.blobId || r.msg.value.sha256 || 'random';
            ct = r.msg.value.contentType;
            expected = r.msg.value.sha256;
          } else if (r.msg.case === 'chunk') parts.push(r.msg.value);
        }
        if (failures-- > 0) throw new ConnectError('gateway restarting', Code.Unavailable);
        if (blobs.has(id)) throw new ConnectError(`blob ${id} already exists`, Code.AlreadyExists);
        const data = Buffer.concat(parts);
        if (expected && expected !== sha(data)) throw new ConnectError('sha mismatch', Code.InvalidArgument);
        blobs.set(id, { data, ct });
        return { blob: info(id) };
      },
      async *download(req) {
        calls.download++;
        if (failures-- > 0) throw new ConnectError('no healthy upstream', Code.Unavailable);
        const b = blobs.get(req.blobId);
        if (!b) throw new ConnectError(`blob ${req.blobId} not found`, Code.NotFound);
        yield create(DownloadResponseSchema, { msg: { case: 'info', value: info(req.blobId) } });
        let data = b.data.subarray(
          Number(req.offset),
          req.length ? Number(req.offset + req.length) : undefined,
        );
        if (opts.corrupt) data = Uint8Array.from(data, (x, i) => (i === 0 ? x ^ 1 : x));
        let sent = 0;
        for (let i = 0; i < data.length; i += 1000) {
          if (opts.cutAfter !== undefined && cuts > 0 && sent >= opts.cutAfter) {
            cuts--;
            throw new ConnectError('upstream reset', Code.Unavailable);
          }
          const c = data.subarray(i, i + 1000);
          sent += c.length;
          yield create(DownloadResponseSchema, { msg: { case: 'chunk', value: c } });
        }
      },
      async stat(req) {
        if (!blobs.has(req.blobId)) throw new ConnectError(`blob ${req.blobId} not found`, Code.NotFound);
        return { blob: info(req.blobId) };
      },
      async delete(req) {
        return { found: blobs.delete(req.blobId) };
      },
    }),
  );
  return { transport, blobs, calls };
}

const client = (transport: ReturnType<typeof fakeService>['transport']) =>
  new HaystackClient({ transport, retryBaseMs: 1, retryMaxMs: 5, chunkSize: 4096 });

describe('HaystackClient', () => {
  it('uploads bytes content-addressed with progress, and downloads them verified', async () => {
    const f = fakeService();
    const c = client(f.transport);
    const data = bytes(50_000, 1);
    const progress: number[] = [];
    const stored = await c.upload(data, { contentType: 'image/png', onProgress: (s) => progress.push(s) });
    expect(stored.id).toBe(sha(data));
    expect(stored.size).toBe(50_000);
    expect(progress[0]).toBe(0);
    expect(progress.at(-1)).toBe(50_000);
    expect(progress.length).toBeGreaterThan(10);
    const got = await c.download(stored.id);
    expect(Buffer.from(got.data).equals(data)).toBe(true);
    expect(got.info.contentType).toBe('image/png');
  });

  it('retries UNAVAILABLE with backoff, replaying replayable sources', async () => {
    const f = fakeService({ failFirst: 2 });
    const stored = await client(f.transport).upload(bytes(10_000, 2), { id: 'r1' });
    expect(stored.id).toBe('r1');
    expect(f.calls.upload).toBe(3);
  });

  it('gives up after the configured retries with an UnavailableError', async () => {
    const f = fakeService({ failFirst: 100 });
    const c = new HaystackClient({ transport: f.transport, retries: 2, retryBaseMs: 1 });
    await expect(c.upload(bytes(10, 1))).rejects.toBeInstanceOf(UnavailableError);
    expect(f.calls.upload).toBe(3);
  });

  it('does not replay a one-shot stream', async () => {
    const f = fakeService({ failFirst: 1 });
    async function* once() {
      yield bytes(100, 1);
    }
    await expect(client(f.transport).upload(once(), { size: 100 })).rejects.toBeInstanceOf(UnavailableError);
  });

  it('treats re-uploading the same content as success (content-addressed ids)', async () => {
    const f = fakeService();
    const c = client(f.transport);
    const a = await c.upload(bytes(100, 3));
    const b = await c.upload(bytes(100, 3));
    expect(b.id).toBe(a.id);
    await c.upload(bytes(100, 4), { id: 'taken' });
    await expect(c.upload(bytes(100, 5), { id: 'taken' })).rejects.toBeInstanceOf(AlreadyExistsError);
  });

  it('resumes a download cut mid-stream from the next byte', async () => {
    const f = fakeService({ cutAfter: 20_000 });
    const c = client(f.transport);
    const data = bytes(50_000, 6);
    await c.upload(data, { id: 'cut' });
    const progress: number[] = [];
    const got = await c.download('cut', { onProgress: (r) => progress.push(r) });
    expect(Buffer.from(got.data).equals(data)).toBe(true);
    expect(f.calls.download).toBe(2);
    expect(progress.at(-1)).toBe(50_000);
  });

  it('fails a download whose content does not match its SHA-256 with IntegrityError', async () => {
    const f = fakeService({ corrupt: true });
    const c = client(f.transport);
    await c.upload(bytes(5000, 7), { id: 'bad' });
    await expect(c.download('bad')).rejects.toBeInstanceOf(IntegrityError);
  });

  it('downloads ranges; stat, delete and NotFoundError', async () => {
    const f = fakeService();
    const c = client(f.transport);
    const data = bytes(5000, 8);
    await c.upload(data, { id: 'x' });
    const part = await c.download('x', { offset: 100, length: 50 });
    expect(Buffer.from(part.data).equals(data.subarray(100, 150))).toBe(true);
    expect((await c.stat('x')).size).toBe(5000);
    expect(await c.delete('x')).toBe(true);
    expect(await c.delete('x')).toBe(false);
    await expect(c.stat('x')).rejects.toBeInstanceOf(NotFoundError);
    await expect(c.download('x')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('requires a size for streams', async () => {
    const f = fakeService();
    async function* s() {
      yield new Uint8Array(1);
    }
    await expect(client(f.transport).upload(s())).rejects.toThrow(/opts.size/);
  });
});

describe('HaystackClient: abort and close', () => {
  const isAbortError = (e: unknown) => e instanceof DOMException && e.name === 'AbortError';

  it('an upload aborted while sending rejects with the signal reason (AbortError), not a HaystackError', async () => {
    const f = fakeService();
    const ctl = new AbortController();
    let sentOne!: () => void;
    const started = new Promise<void>((r) => {
      sentOne = r;
    });
    const p = client(f.transport).upload(
      async function* () {
        yield bytes(4096, 1);
        sentOne();
        await new Promise(() => {}); // the rest never comes
      },
      { size: 100_000, signal: ctl.signal },
    );
    await started;
    ctl.abort();
    const err = await p.catch((e: unknown) => e);
    expect(isAbortError(err)).toBe(true);
    expect(err).not.toBeInstanceOf(HaystackError);
  });

  it('a download aborted between chunks rejects with the exact reason given to abort()', async () => {
    const f = fakeService();
    const c = client(f.transport);
    await c.upload(bytes(50_000, 2), { id: 'abort-me' });
    const ctl = new AbortController();
    const reason = new Error('user left the page');
    const d = await c.downloadStream('abort-me', { signal: ctl.signal });
    const it = d.chunks[Symbol.asyncIterator]();
    expect((await it.next()).done).toBe(false);
    ctl.abort(reason);
    await expect(it.next()).rejects.toBe(reason);
  });

  it('abort during the retry backoff ends the call at once with AbortError', async () => {
    const f = fakeService({ failFirst: 100 });
    // A 10-minute backoff: only the abort can end this call within the test's time.
    const c = new HaystackClient({ transport: f.transport, retryBaseMs: 600_000, retryMaxMs: 600_000 });
    const ctl = new AbortController();
    const p = c.upload(bytes(100, 3), { signal: ctl.signal });
    for (const deadline = Date.now() + 10_000; f.calls.upload < 1 && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 5));
    }
    ctl.abort();
    const err = await p.catch((e: unknown) => e);
    expect(isAbortError(err)).toBe(true);
    expect(f.calls.upload).toBe(1);
  });

  it('an already aborted signal rejects before any call; AbortSignal.abort(reason) passes its reason', async () => {
    const f = fakeService();
    const c = client(f.transport);
    const e1 = await c.upload(bytes(10, 4), { signal: AbortSignal.abort() }).catch((e: unknown) => e);
    expect(isAbortError(e1)).toBe(true);
    await expect(c.stat('x', { signal: AbortSignal.abort('gone') })).rejects.toBe('gone');
    expect(f.calls.upload).toBe(0);
  });

  it('close() releases the HTTP/2 connection; later calls fail with FAILED_PRECONDITION', async () => {
    const { createServer } = await import('node:http2');
    const { connectNodeAdapter } = await import('@connectrpc/connect-node');
    const server = createServer(
      connectNodeAdapter({
        routes: (router) =>
          router.service(BlobService, {
            stat: (req) => ({ blob: create(BlobInfoSchema, { blobId: req.blobId, sha256: 'ab', size: 1n }) }),
          }),
      }),
    );
    const sessions = new Set<unknown>();
    server.on('session', (s) => {
      sessions.add(s);
      s.on('close', () => sessions.delete(s));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      const c = new HaystackClient({ url: `http://127.0.0.1:${port}` });
      expect((await c.stat('a')).id).toBe('a');
      expect(sessions.size).toBe(1);
      await c.close();
      await c.close(); // idempotent
      for (const deadline = Date.now() + 10_000; sessions.size > 0 && Date.now() < deadline; ) {
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(sessions.size).toBe(0);
      const err = await c.stat('a').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(HaystackError);
      expect((err as HaystackError).codeName).toBe('FAILED_PRECONDITION');
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});
