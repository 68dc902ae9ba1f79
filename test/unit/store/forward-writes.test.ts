import { getEventListeners } from 'node:events';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { describe, expect, it } from 'vitest';
import type { StoreTarget } from '../../../gen/haystack/v1/common_pb.js';
import {
  type ForwardWritesRequest,
  ForwardWritesRequestSchema,
  type ForwardWritesResponse,
  ForwardWritesResponseSchema,
  type WriteHeader,
  WriteHeaderSchema,
  type WriteRequest,
  WriteResponseSchema,
} from '../../../gen/haystack/v1/store_pb.js';
import { FORWARD_IN_FLIGHT, serveForwardWrites } from '../../../internal/store/forward-writes.js';
import { ForwardWritesClient, forwardIdleMs } from '../../../internal/store/forward-writes-client.js';

// The logic of both ends of StoreService.ForwardWrites, with the stream between them
// in memory; test/integration/store-forward-writes.test.ts runs it between real stores.

const target: StoreTarget = {
  $typeName: 'haystack.v1.StoreTarget',
  storeId: 'store-b',
  address: '127.0.0.1:1',
  zone: '',
};
const header = (blobId: string, size: number): WriteHeader =>
  create(WriteHeaderSchema, { blobId, size: BigInt(size), cookie: 7n });
const tick = () => new Promise((r) => setImmediate(r));

/** A hand-driven replica: requests as they arrive, and answers (or an end) when the test says. */
function fakeReplica() {
  const received: ForwardWritesRequest[] = [];
  const opened: AbortSignal[] = [];
  let push: ((a: ForwardWritesResponse | Error | 'end') => void) | undefined;
  const open = (_t: StoreTarget, requests: AsyncIterable<ForwardWritesRequest>, signal: AbortSignal) => {
    opened.push(signal);
    const answers: (ForwardWritesResponse | Error | 'end')[] = [];
    let wake: (() => void) | undefined;
    push = (a) => {
      answers.push(a);
      wake?.();
    };
    void (async () => {
      for await (const r of requests) received.push(r);
    })();
    return (async function* () {
      for (;;) {
        const a = answers.shift();
        if (a === 'end') return;
        if (a instanceof Error) throw a;
        if (a) {
          yield a;
          continue;
        }
        await new Promise<void>((r) => (wake = r));
      }
    })();
  };
  const ok = (seq: bigint, blobId: string) =>
    create(ForwardWritesResponseSchema, {
      seq,
      result: { case: 'written', value: create(WriteResponseSchema, { blobId }) },
    });
  return { received, opened, open, answer: (a: ForwardWritesResponse | Error | 'end') => push?.(a), ok };
}

describe('ForwardWritesClient (the forwarding store)', () => {
  it('carries concurrent writes on one stream and matches answers by seq, in any order', async () => {
    const r = fakeReplica();
    const client = new ForwardWritesClient(r.open, 60_000);
    const signal = new AbortController().signal;
    const a = client.write(target, header('a', 1), new Uint8Array(1), signal);
    const b = client.write(target, header('b', 1), new Uint8Array(1), signal);
    await tick();
    expect(r.opened).toHaveLength(1);
    expect(r.received.map((q) => q.header?.blobId)).toEqual(['a', 'b']);
    const [sa, sb] = r.received.map((q) => q.seq) as [bigint, bigint];
    expect(sa).not.toBe(sb);
    r.answer(r.ok(sb, 'b'));
    r.answer(r.ok(sa, 'a'));
    expect((await a).blobId).toBe('a');
    expect((await b).blobId).toBe('b');
    client.close();
  });

  it("rejects a write with the replica's code and message", async () => {
    const r = fakeReplica();
    const client = new ForwardWritesClient(r.open, 60_000);
    const w = client.write(target, header('x', 1), new Uint8Array(1), new AbortController().signal);
    await tick();
    r.answer(
      create(ForwardWritesResponseSchema, {
        seq: r.received[0]!.seq,
        result: { case: 'error', value: { code: Code.AlreadyExists, message: 'other content' } },
      }),
    );
    await expect(w).rejects.toMatchObject({ code: Code.AlreadyExists, rawMessage: 'other content' });
    client.close();
  });

  it('fails every unanswered write when the stream fails, then opens a new stream for the next', async () => {
    const r = fakeReplica();
    const client = new ForwardWritesClient(r.open, 60_000);
    const signal = new AbortController().signal;
    const ws = [
      client.write(target, header('p', 1), new Uint8Array(1), signal),
      client.write(target, header('q', 1), new Uint8Array(1), signal),
    ];
    await tick();
    r.answer(new ConnectError('connection reset', Code.Unavailable));
    for (const w of ws) await expect(w).rejects.toMatchObject({ code: Code.Unavailable });
    expect(r.opened[0]!.aborted).toBe(true);
    const next = client.write(target, header('r', 1), new Uint8Array(1), signal);
    await tick();
    expect(r.opened).toHaveLength(2);
    r.answer(r.ok(r.received.at(-1)!.seq, 'r'));
    expect((await next).blobId).toBe('r');
    client.close();
  });

  it('fails unanswered writes UNAVAILABLE when the replica ends the stream (it is draining)', async () => {
    const r = fakeReplica();
    const client = new ForwardWritesClient(r.open, 60_000);
    const w = client.write(target, header('d', 1), new Uint8Array(1), new AbortController().signal);
    await tick();
    r.answer('end');
    await expect(w).rejects.toMatchObject({ code: Code.Unavailable });
    client.close();
  });

  it('rejects a cancelled write at once and ignores its late answer', async () => {
    const r = fakeReplica();
    const client = new ForwardWritesClient(r.open, 60_000);
    const ac = new AbortController();
    const w = client.write(target, header('c', 1), new Uint8Array(1), ac.signal);
    await tick();
    ac.abort();
    await expect(w).rejects.toMatchObject({ code: Code.Canceled });
    r.answer(r.ok(r.received[0]!.seq, 'c'));
    const other = client.write(target, header('o', 1), new Uint8Array(1), new AbortController().signal);
    await tick();
    r.answer(r.ok(r.received[1]!.seq, 'o'));
    expect((await other).blobId).toBe('o');
    expect(r.opened).toHaveLength(1);
    client.close();
  });

  it(`keeps at most ${FORWARD_IN_FLIGHT} writes in flight per stream; the next waits for an answer`, async () => {
    const r = fakeReplica();
    const client = new ForwardWritesClient(r.open, 60_000);
    const ws = Array.from({ length: FORWARD_IN_FLIGHT + 1 }, (_, i) =>
      client.write(target, header(`n${i}`, 1), new Uint8Array(1), new AbortController().signal),
    );
    await tick();
    expect(r.received).toHaveLength(FORWARD_IN_FLIGHT);
    r.answer(r.ok(r.received[0]!.seq, 'n0'));
    await ws[0];
    await tick();
    expect(r.received).toHaveLength(FORWARD_IN_FLIGHT + 1);
    client.close();
    await Promise.allSettled(ws);
  });

  it('a write cancelled while it waits for a slot leaves at once and does not keep the next waiter out', async () => {
    const r = fakeReplica();
    const client = new ForwardWritesClient(r.open, 60_000);
    const full = Array.from({ length: FORWARD_IN_FLIGHT }, (_, i) =>
      client.write(target, header(`f${i}`, 1), new Uint8Array(1), new AbortController().signal),
    );
    const giveUp = new AbortController();
    const quitter = client.write(target, header('quitter', 1), new Uint8Array(1), giveUp.signal);
    const patient = client.write(
      target,
      header('patient', 1),
      new Uint8Array(1),
      new AbortController().signal,
    );
    await tick();
    giveUp.abort();
    await expect(quitter).rejects.toMatchObject({ code: Code.Canceled });
    r.answer(r.ok(r.received[0]!.seq, 'f0'));
    await full[0];
    await tick();
    expect(r.received.map((q) => q.header?.blobId)).toContain('patient');
    expect(r.received.map((q) => q.header?.blobId)).not.toContain('quitter');
    client.close();
    await Promise.allSettled([...full, patient]);
  });

  it('a write cancelled before the transport took it is never sent', async () => {
    const taken: ForwardWritesRequest[] = [];
    let take: (() => Promise<void>) | undefined;
    const open = (_t: StoreTarget, requests: AsyncIterable<ForwardWritesRequest>) => {
      const it = requests[Symbol.asyncIterator]();
      take = async () => {
        const n = await it.next();
        if (!n.done) taken.push(n.value);
      };
      return (async function* (): AsyncGenerator<ForwardWritesResponse> {
        await new Promise(() => {});
      })();
    };
    const client = new ForwardWritesClient(open, 60_000);
    const ac = new AbortController();
    const gone = client.write(target, header('gone', 1), new Uint8Array(1), ac.signal);
    await tick();
    ac.abort();
    await expect(gone).rejects.toMatchObject({ code: Code.Canceled });
    const kept = client.write(target, header('kept', 1), new Uint8Array(1), new AbortController().signal);
    await tick();
    await take!();
    expect(taken.map((q) => q.header?.blobId)).toEqual(['kept']);
    client.close();
    await expect(kept).rejects.toMatchObject({ code: Code.Unavailable });
  });

  it('opens no stream for a write already cancelled, and none once closed', async () => {
    const r = fakeReplica();
    const client = new ForwardWritesClient(r.open, 60_000);
    const ac = new AbortController();
    ac.abort();
    await expect(client.write(target, header('z', 1), new Uint8Array(1), ac.signal)).rejects.toMatchObject({
      code: Code.Canceled,
    });
    client.close();
    await expect(
      client.write(target, header('y', 1), new Uint8Array(1), new AbortController().signal),
    ).rejects.toMatchObject({ code: Code.Unavailable });
    expect(r.opened).toHaveLength(0);
  });

  it('leaves a replica whose store refuses the stream itself (an older store) to Write streams for a while', async () => {
    const r = fakeReplica();
    const client = new ForwardWritesClient(r.open, 60_000);
    expect(client.supports(target)).toBe(true);
    const w = client.write(target, header('u', 1), new Uint8Array(1), new AbortController().signal);
    await tick();
    r.answer(new ConnectError('HTTP 404 Not Found', Code.Unimplemented));
    await expect(w).rejects.toMatchObject({ code: Code.Unimplemented });
    expect(client.supports(target)).toBe(false);
    // Another store, or a stream that had answered before failing, is not marked.
    const other = { ...target, storeId: 'store-c' };
    const w2 = client.write(other, header('v', 1), new Uint8Array(1), new AbortController().signal);
    await tick();
    r.answer(r.ok(r.received.at(-1)!.seq, 'v'));
    await w2;
    r.answer(new ConnectError('denied later', Code.PermissionDenied));
    await tick();
    expect(client.supports(other)).toBe(true);
    client.close();
  });

  it('ends idle streams before the request idle limit a peer applies (2 s, or half a shorter limit)', () => {
    expect(forwardIdleMs(60_000)).toBe(2_000);
    expect(forwardIdleMs(3_000)).toBe(1_500);
    expect(forwardIdleMs(100)).toBe(50);
  });

  it('ends a stream left idle, and the next write opens another', async () => {
    const r = fakeReplica();
    const client = new ForwardWritesClient(r.open, 20);
    const w = client.write(target, header('i', 1), new Uint8Array(1), new AbortController().signal);
    await tick();
    r.answer(r.ok(r.received[0]!.seq, 'i'));
    await w;
    await new Promise((res) => setTimeout(res, 60));
    const again = client.write(target, header('j', 1), new Uint8Array(1), new AbortController().signal);
    await tick();
    expect(r.opened).toHaveLength(2);
    r.answer(r.ok(r.received.at(-1)!.seq, 'j'));
    expect((await again).blobId).toBe('j');
    client.close();
  });
});

describe('serveForwardWrites (the replica)', () => {
  /** Requests the test pushes, as the stream's request side. */
  function requestStream() {
    const queue: (ForwardWritesRequest | 'end')[] = [];
    let wake: (() => void) | undefined;
    return {
      push(r: ForwardWritesRequest | 'end') {
        queue.push(r);
        wake?.();
      },
      iterable: (async function* () {
        for (;;) {
          const r = queue.shift();
          if (r === 'end') return;
          if (r) {
            yield r;
            continue;
          }
          await new Promise<void>((res) => (wake = res));
        }
      })(),
    };
  }
  const request = (seq: bigint, blobId: string, content: Uint8Array, size = content.length) =>
    create(ForwardWritesRequestSchema, { seq, header: header(blobId, size), content });

  /** A write that finishes when the test releases it. */
  function heldWrites() {
    const started: string[] = [];
    const release = new Map<string, () => void>();
    const writeOne = async (messages: AsyncIterable<WriteRequest>) => {
      let blobId = '';
      for await (const m of messages) if (m.msg.case === 'header') blobId = m.msg.value.blobId;
      started.push(blobId);
      await new Promise<void>((r) => release.set(blobId, r));
      return create(WriteResponseSchema, { blobId });
    };
    return { started, release, writeOne };
  }

  it('writes concurrently and answers in completion order with each seq; a bad request gets its own INVALID_ARGUMENT', async () => {
    const reqs = requestStream();
    const h = heldWrites();
    const answers: ForwardWritesResponse[] = [];
    const served = (async () => {
      for await (const a of serveForwardWrites(reqs.iterable, h.writeOne, new AbortController().signal))
        answers.push(a);
    })();
    reqs.push(request(1n, 'first', new Uint8Array(3)));
    reqs.push(request(2n, 'second', new Uint8Array(3)));
    reqs.push(request(3n, 'short', new Uint8Array(2), 3));
    await tick();
    expect(h.started.sort()).toEqual(['first', 'second']);
    h.release.get('second')!();
    h.release.get('first')!();
    reqs.push('end');
    await served;
    expect(answers.map((a) => [a.seq, a.result.case])).toEqual([
      [3n, 'error'],
      [2n, 'written'],
      [1n, 'written'],
    ]);
    const bad = answers[0]!.result;
    expect(bad.case === 'error' && bad.value.code).toBe(Code.InvalidArgument);
  });

  it(`takes at most ${FORWARD_IN_FLIGHT} writes at once`, async () => {
    const reqs = requestStream();
    const h = heldWrites();
    const gen = serveForwardWrites(reqs.iterable, h.writeOne, new AbortController().signal);
    const first = gen.next();
    for (let i = 0; i <= FORWARD_IN_FLIGHT; i++) reqs.push(request(BigInt(i), `b${i}`, new Uint8Array(1)));
    await tick();
    expect(h.started).toHaveLength(FORWARD_IN_FLIGHT);
    h.release.get('b0')!();
    expect((await first).value?.seq).toBe(0n);
    await tick();
    // Answered but its answer not yet taken by the transport: still counted.
    expect(h.started).toHaveLength(FORWARD_IN_FLIGHT);
    const second = gen.next();
    await tick();
    expect(h.started).toHaveLength(FORWARD_IN_FLIGHT + 1);
    h.release.get('b1')!();
    await second;
    for (const r of h.release.values()) r();
    reqs.push('end');
    for await (const _ of { [Symbol.asyncIterator]: () => gen }) {
      // drain
    }
  });

  it('leaves no listener on the store-wide draining signal once a stream ends, however it ends', async () => {
    const drain = new AbortController();
    const h = heldWrites();
    for (const how of ['end', 'cancel'] as const) {
      const reqs = requestStream();
      const gen = serveForwardWrites(reqs.iterable, h.writeOne, drain.signal);
      const first = gen.next();
      await tick();
      expect(getEventListeners(drain.signal, 'abort')).toHaveLength(1);
      if (how === 'end') {
        reqs.push('end');
        expect((await first).done).toBe(true);
      } else {
        reqs.push(request(1n, 'x', new Uint8Array(1)));
        await tick();
        h.release.get('x')!();
        await first;
        await gen.return(undefined);
      }
      expect(getEventListeners(drain.signal, 'abort')).toHaveLength(0);
    }
  });

  it('holds no request once it is answered, however long the stream lives', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const reqs = requestStream();
    const writeOne = async (messages: AsyncIterable<WriteRequest>) => {
      for await (const _ of messages) {
        // consumed, as a Write would
      }
      return create(WriteResponseSchema, {});
    };
    const gen = serveForwardWrites(reqs.iterable, writeOne, new AbortController().signal);
    const refs: WeakRef<ForwardWritesRequest>[] = [];
    for (let i = 0; i < 50; i++) {
      const r = request(BigInt(i), `g${i}`, new Uint8Array(1024));
      refs.push(new WeakRef(r));
      reqs.push(r);
      expect((await gen.next()).value?.seq).toBe(BigInt(i));
    }
    for (let i = 0; i < 3; i++) {
      await tick();
      gc();
    }
    // The newest may still sit in a local; a stream that kept each would hold all 50.
    expect(refs.filter((r) => r.deref() !== undefined).length).toBeLessThanOrEqual(2);
    reqs.push('end');
    expect((await gen.next()).done).toBe(true);
  });

  it('takes no more writes while its answers are not taken (a sender that does not read)', async () => {
    let started = 0;
    const writeOne = async (messages: AsyncIterable<WriteRequest>) => {
      for await (const _ of messages) {
        // consumed, as a Write would
      }
      started++;
      return create(WriteResponseSchema, {});
    };
    const endless = (async function* () {
      for (let n = 0; n < 1000; n++) yield request(BigInt(n), `u${n}`, new Uint8Array(1));
    })();
    const gen = serveForwardWrites(endless, writeOne, new AbortController().signal);
    await gen.next();
    for (let i = 0; i < 50; i++) await tick();
    expect(started).toBeLessThanOrEqual(FORWARD_IN_FLIGHT + 1);
    await gen.return(undefined);
  });

  it('once draining, takes no more requests, answers those it took, and ends', async () => {
    const reqs = requestStream();
    const h = heldWrites();
    const drain = new AbortController();
    const answers: bigint[] = [];
    const served = (async () => {
      for await (const a of serveForwardWrites(reqs.iterable, h.writeOne, drain.signal)) answers.push(a.seq);
    })();
    reqs.push(request(1n, 'taken', new Uint8Array(1)));
    await tick();
    drain.abort();
    reqs.push(request(2n, 'after', new Uint8Array(1)));
    await tick();
    expect(h.started).toEqual(['taken']);
    h.release.get('taken')!();
    await served;
    expect(answers).toEqual([1n]);
  });
});
