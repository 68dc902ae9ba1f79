import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import {
  type ForwardWritesRequest,
  type ForwardWritesResponse,
  ForwardWritesResponseSchema,
  type WriteRequest,
  WriteRequestSchema,
  type WriteResponse,
} from '../../gen/haystack/v1/store_pb.js';
import type { MessageLimit } from '../server/server.js';

/**
 * StoreService.ForwardWrites, the replica's side: one long-lived stream from a store
 * that forwards small writes here, instead of a Write stream per replica per blob.
 * Opening and closing an HTTP/2 stream costs ~0.1 ms of CPU on each side beyond a
 * message on an open one (`npm run bench:h2-floor`), on every replica of every write;
 * docs/benchmarks.md has the figures. Each request is written exactly as a Write of
 * its header and content (the same checks, fencing and answers), concurrently with
 * the others, and answered with its seq once durable, in completion order.
 */

/** Largest content forwarded inline on a ForwardWrites stream; larger blobs get a Write stream per replica. */
export const FORWARD_INLINE_MAX = 64 * 1024;

/** Writes one stream has taken and not yet had their answers sent: the rest wait (the replica stops reading; HTTP/2 flow control holds the sender). */
export const FORWARD_IN_FLIGHT = 64;

/** Largest ForwardWritesRequest accepted: the inline content and a header (blob id, content type, file name: a few hundred bytes). */
export const FORWARD_MESSAGE_MAX = FORWARD_INLINE_MAX + 4096;

/** The direct gRPC path's limit for ForwardWrites messages (RESOURCE_EXHAUSTED above it). */
export const FORWARD_MESSAGE_LIMIT: MessageLimit = {
  maxBytes: FORWARD_MESSAGE_MAX,
  advice: `a ForwardWrites request carries at most ${FORWARD_INLINE_MAX} bytes of content: send larger blobs as Write streams`,
};

/** Writes one blob as a Write with these messages (header, then the content) would. */
export type WriteOne = (messages: AsyncIterable<WriteRequest>) => Promise<WriteResponse>;

/** The Write messages of one request, or INVALID_ARGUMENT saying what is wrong with it. */
function asWrite(req: ForwardWritesRequest): WriteRequest[] {
  const h = req.header;
  if (!h) throw new ConnectError(`ForwardWrites request ${req.seq} has no header`, Code.InvalidArgument);
  if (h.forwardTo.length > 0 || h.cold) {
    throw new ConnectError(
      `ForwardWrites request ${req.seq} for "${h.blobId.slice(0, 80)}" must have no forward_to and no cold stripe: a replica forwards nothing, and cold stubs are the manager's Writes`,
      Code.InvalidArgument,
    );
  }
  if (req.content.length > FORWARD_INLINE_MAX || BigInt(req.content.length) !== h.size) {
    throw new ConnectError(
      `ForwardWrites request ${req.seq} carries ${req.content.length} bytes for a blob of ${h.size}: the content must be the whole blob, at most ${FORWARD_INLINE_MAX} bytes (send larger blobs as Write streams)`,
      Code.InvalidArgument,
    );
  }
  return [
    create(WriteRequestSchema, { msg: { case: 'header', value: h } }),
    create(WriteRequestSchema, { msg: { case: 'chunk', value: req.content } }),
  ];
}

async function* each<T>(items: readonly T[]): AsyncGenerator<T> {
  yield* items;
}

/** One write's answer: what the Write answered, or the status it ended with. */
async function answer(req: ForwardWritesRequest, writeOne: WriteOne): Promise<ForwardWritesResponse> {
  try {
    const written = await writeOne(each(asWrite(req)));
    return create(ForwardWritesResponseSchema, { seq: req.seq, result: { case: 'written', value: written } });
  } catch (err) {
    const e = ConnectError.from(err);
    return create(ForwardWritesResponseSchema, {
      seq: req.seq,
      result: { case: 'error', value: { code: e.code, message: e.rawMessage } },
    });
  }
}

/**
 * Serves one ForwardWrites stream: takes requests while fewer than FORWARD_IN_FLIGHT
 * are in flight, writes each with `writeOne`, yields each answer as it completes.
 * Once `draining` aborts (the store is shutting down) it takes no more requests,
 * answers those it took and ends the stream; the sender fails the rest (UNAVAILABLE,
 * outcome unknown) and its gateway's retry goes elsewhere. The server's request idle
 * limit (LISTEN_REQUEST_IDLE_TIMEOUT, 60 s by default) runs on these streams too, also
 * while writes are in flight: a write slower than that, with no other request on the
 * stream meanwhile, ends it DEADLINE_EXCEEDED, and the sender fails its writes
 * UNAVAILABLE (retried; idempotent).
 */
export async function* serveForwardWrites(
  requests: AsyncIterable<ForwardWritesRequest>,
  writeOne: WriteOne,
  draining: AbortSignal,
): AsyncGenerator<ForwardWritesResponse> {
  const answered: ForwardWritesResponse[] = [];
  let inFlight = 0;
  let taking = true;
  let failure: unknown;
  let wakeAnswers: (() => void) | undefined;
  let wakeReader: (() => void) | undefined;
  let drained = draining.aborted;
  /** Ends the reader's wait for the next request: set anew for each wait, never piled up. */
  let wakeDrain: (() => void) | undefined;
  const onDrain = () => {
    drained = true;
    wakeDrain?.();
  };
  draining.addEventListener('abort', onDrain, { once: true });

  void (async () => {
    const it = requests[Symbol.asyncIterator]();
    try {
      for (;;) {
        while (inFlight >= FORWARD_IN_FLIGHT) await new Promise<void>((r) => (wakeReader = r));
        if (drained) break;
        // Not Promise.race against one promise of the drain: each race would leave a
        // reaction on it holding that request for the stream's whole life.
        const next = await new Promise<IteratorResult<ForwardWritesRequest> | undefined>(
          (resolve, reject) => {
            wakeDrain = () => resolve(undefined);
            it.next().then(resolve, reject);
          },
        );
        wakeDrain = undefined;
        if (next === undefined || next.done) break;
        inFlight++;
        void answer(next.value, writeOne).then((a) => {
          answered.push(a);
          wakeAnswers?.();
        });
      }
    } catch (err) {
      failure = err;
    } finally {
      taking = false;
      wakeAnswers?.();
    }
  })();

  try {
    for (;;) {
      const a = answered.shift();
      if (a) {
        yield a;
        // Counted until its answer is taken: a sender that reads no answers gets no more writes.
        inFlight--;
        wakeReader?.();
        continue;
      }
      if (!taking && inFlight === 0) {
        if (failure !== undefined) throw failure;
        return;
      }
      await new Promise<void>((r) => (wakeAnswers = r));
    }
  } finally {
    // The signal is the store's, shared by every stream it serves: leave nothing on it.
    draining.removeEventListener('abort', onDrain);
  }
}
