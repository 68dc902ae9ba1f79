import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import type { StoreTarget } from '../../gen/haystack/v1/common_pb.js';
import {
  type ForwardWritesRequest,
  ForwardWritesRequestSchema,
  type ForwardWritesResponse,
  type WriteHeader,
  type WriteResponse,
} from '../../gen/haystack/v1/store_pb.js';
import { FORWARD_IN_FLIGHT } from './forward-writes.js';

/**
 * StoreService.ForwardWrites, the forwarding store's side: one long-lived stream per
 * replica store (per store id and address) carrying every small write this store
 * forwards there, matched to answers by seq. A stream that fails or ends fails the
 * writes it has not answered (their outcome is unknown, like a Write stream cut
 * short: the gateway's retry is idempotent) and the next write opens a new one. A
 * stream with nothing in flight for `idleMs` is ended (forwardIdleMs).
 */

/** Opens a ForwardWrites call to `target`: a pinned client's forwardWrites. */
export type OpenForwardWrites = (
  target: StoreTarget,
  requests: AsyncIterable<ForwardWritesRequest>,
  signal: AbortSignal,
) => AsyncIterable<ForwardWritesResponse>;

/**
 * How long a stream with nothing in flight stays open: 2 s, or less under a shorter
 * request idle limit (LISTEN_REQUEST_IDLE_TIMEOUT, which the replica applies to these
 * streams too). Ending it first means a write never goes out on a stream the replica
 * is about to cut; opening another costs one HTTP/2 stream per idle spell.
 */
export function forwardIdleMs(requestIdleMs: number): number {
  return Math.max(50, Math.min(2_000, Math.floor(requestIdleMs / 2)));
}

/** A replica that refused ForwardWrites itself (an older store) gets Write streams for this long before it is asked again. */
const UNSUPPORTED_MS = 60_000;

export class ForwardWritesClient {
  private readonly streams = new Map<string, ForwardStream>();
  /** Replicas whose store refused the stream itself (UNIMPLEMENTED, PERMISSION_DENIED): until when to leave them be. */
  private readonly unsupported = new Map<string, number>();
  private closed = false;

  /** `idleMs`: see forwardIdleMs. */
  constructor(
    private readonly open: OpenForwardWrites,
    private readonly idleMs: number,
  ) {}

  /**
   * False while `target` is a store that refused ForwardWrites itself, before answering
   * any write on it (a store of an older version during a rolling upgrade: UNIMPLEMENTED,
   * or PERMISSION_DENIED from its role table): its writes go on Write streams meanwhile.
   */
  supports(target: StoreTarget): boolean {
    const key = keyOf(target);
    const until = this.unsupported.get(key);
    if (until === undefined) return true;
    if (Date.now() < until) return false;
    this.unsupported.delete(key);
    return true;
  }

  /**
   * Writes `content` (the whole blob, FORWARD_INLINE_MAX bytes at most) on `target`
   * under `header` (forward_to empty): the replica's Write answer, or its refusal as
   * a ConnectError with the replica's code; the stream's own failure as its error.
   * Aborting `signal` rejects at once (CANCELED); the replica may still write the blob
   * if the request had gone out.
   */
  async write(
    target: StoreTarget,
    header: WriteHeader,
    content: Uint8Array,
    signal: AbortSignal,
  ): Promise<WriteResponse> {
    if (this.closed) throw new ConnectError('this store is shutting down', Code.Unavailable);
    if (signal.aborted) throw cancelled();
    const key = keyOf(target);
    let s = this.streams.get(key);
    if (!s?.open) {
      const stream: ForwardStream = new ForwardStream(
        (requests, abort) => this.open(target, requests, abort),
        (refused) => {
          if (this.streams.get(key) === stream) this.streams.delete(key);
          if (refused) this.unsupported.set(key, Date.now() + UNSUPPORTED_MS);
        },
        this.idleMs,
      );
      this.streams.set(key, stream);
      s = stream;
    }
    return s.write(header, content, signal);
  }

  /** Ends every stream; writes not yet answered fail UNAVAILABLE, and later ones at once. */
  close(): void {
    this.closed = true;
    for (const s of [...this.streams.values()]) {
      s.fail(new ConnectError('this store is shutting down', Code.Unavailable));
    }
  }
}

const keyOf = (t: StoreTarget) => `${t.storeId}@${t.address}`;
const cancelled = () => new ConnectError('the write was cancelled', Code.Canceled);

interface Pending {
  resolve(r: WriteResponse): void;
  reject(err: unknown): void;
}

/** One ForwardWrites call and the writes waiting for its answers. */
class ForwardStream {
  open = true;
  private seq = 0n;
  /** Writes sent or queued to send, not yet answered: at most FORWARD_IN_FLIGHT. */
  private readonly pending = new Map<bigint, Pending>();
  /** Requests not yet taken by the transport (each also in pending). */
  private readonly queue: ForwardWritesRequest[] = [];
  /** Writes waiting for a slot; each removes itself when its caller gives up. */
  private readonly waiting = new Set<() => void>();
  private wakeRequests: (() => void) | undefined;
  private idle: NodeJS.Timeout | undefined;
  private failure: unknown;
  /** An answer arrived on this stream: its store serves ForwardWrites. */
  private answered = false;
  private readonly abort = new AbortController();

  constructor(
    open: (
      requests: AsyncIterable<ForwardWritesRequest>,
      signal: AbortSignal,
    ) => AsyncIterable<ForwardWritesResponse>,
    private readonly onClosed: (refused: boolean) => void,
    private readonly idleMs: number,
  ) {
    void this.readAnswers(open(this.requests(), this.abort.signal));
    this.armIdle();
  }

  async write(header: WriteHeader, content: Uint8Array, signal: AbortSignal): Promise<WriteResponse> {
    while (this.open && this.pending.size >= FORWARD_IN_FLIGHT) await this.slot(signal);
    if (!this.open) throw this.failure;
    if (signal.aborted) throw cancelled();
    clearTimeout(this.idle);
    this.seq += 1n;
    const seq = this.seq;
    const request = create(ForwardWritesRequestSchema, { seq, header, content });
    return new Promise<WriteResponse>((resolve, reject) => {
      const onAbort = () => {
        if (!this.pending.delete(seq)) return;
        // Not taken by the transport yet: it never goes out.
        const i = this.queue.indexOf(request);
        if (i >= 0) this.queue.splice(i, 1);
        reject(cancelled());
        this.settled();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.pending.set(seq, {
        resolve: (r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(r);
        },
        reject: (err) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        },
      });
      this.queue.push(request);
      this.wakeRequests?.();
    });
  }

  /** Fails every write not answered and ends the call; the next write opens another stream. */
  fail(err: unknown): void {
    const code = ConnectError.from(err).code;
    if (this.open) {
      this.open = false;
      this.failure = err;
      // Refused as a whole before any answer: the replica's store does not serve ForwardWrites.
      this.onClosed(!this.answered && (code === Code.Unimplemented || code === Code.PermissionDenied));
    }
    clearTimeout(this.idle);
    this.queue.length = 0;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    for (const w of [...this.waiting]) w();
    this.wakeRequests?.();
    this.abort.abort();
  }

  /** Resolves when a slot may be free (or the stream closed); rejects CANCELED when `signal` aborts first. */
  private slot(signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.waiting.delete(wake);
        reject(cancelled());
      };
      const wake = () => {
        this.waiting.delete(wake);
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      if (signal.aborted) return reject(cancelled());
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.add(wake);
    });
  }

  private async *requests(): AsyncGenerator<ForwardWritesRequest> {
    for (;;) {
      const r = this.queue.shift();
      if (r) {
        yield r;
        continue;
      }
      if (!this.open) return;
      await new Promise<void>((resolve) => (this.wakeRequests = resolve));
    }
  }

  private async readAnswers(answers: AsyncIterable<ForwardWritesResponse>): Promise<void> {
    let why: unknown = new ConnectError('the replica ended the ForwardWrites stream', Code.Unavailable);
    try {
      for await (const a of answers) {
        this.answered = true;
        const p = this.pending.get(a.seq);
        if (!p) continue; // cancelled by its caller meanwhile
        this.pending.delete(a.seq);
        if (a.result.case === 'written') p.resolve(a.result.value);
        else {
          const e = a.result.value;
          const code = e && e.code > 0 && e.code <= Code.Unauthenticated ? (e.code as Code) : Code.Unknown;
          p.reject(new ConnectError(e?.message ?? `no result for ForwardWrites request ${a.seq}`, code));
        }
        this.settled();
      }
    } catch (err) {
      why = err;
    }
    this.fail(why);
  }

  /** A write left the stream: every waiting write re-checks for a slot; with none left, the idle clock starts. */
  private settled(): void {
    for (const w of [...this.waiting]) w();
    this.armIdle();
  }

  /** Ends the stream after idleMs with nothing in flight and nobody waiting. */
  private armIdle(): void {
    if (this.pending.size > 0 || this.waiting.size > 0 || !this.open) return;
    clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      if (this.pending.size > 0 || this.waiting.size > 0 || !this.open) return;
      // Ends the request side; the replica answers nothing more and ends its side.
      this.open = false;
      this.failure = new ConnectError('the ForwardWrites stream was idle and ended', Code.Unavailable);
      this.onClosed(false);
      this.wakeRequests?.();
    }, this.idleMs);
    this.idle.unref();
  }
}
