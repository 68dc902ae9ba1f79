import { invalidArgument } from '../rpc/errors.js';

/** A streamed request message: a header first, then `chunk` cases (Write, WriteShard). */
interface StreamedMessage {
  msg: { case: 'chunk'; value: Uint8Array } | { case: string | undefined; value?: unknown };
}

/**
 * The content chunks that follow a streamed request's header, bounded: each at most
 * `maxChunk` bytes, `size` bytes in all. Anything else is INVALID_ARGUMENT (a
 * message other than a chunk, an oversize chunk, more or fewer bytes than declared:
 * "nothing was stored", since callers commit only after the last chunk).
 */
export async function* boundedChunks(
  it: AsyncIterator<StreamedMessage>,
  size: number,
  maxChunk: number,
): AsyncGenerator<Uint8Array> {
  let received = 0;
  for (;;) {
    const next = await it.next();
    if (next.done) break;
    const m = next.value.msg;
    if (m.case !== 'chunk') throw invalidArgument('only chunks may follow the header');
    const chunk = m.value as Uint8Array;
    if (chunk.length > maxChunk) throw invalidArgument(`chunk of ${chunk.length} bytes exceeds ${maxChunk}`);
    received += chunk.length;
    if (received > size) throw invalidArgument(`more than the declared ${size} bytes were sent`);
    yield chunk;
  }
  if (received !== size) {
    throw invalidArgument(`stream ended after ${received} of the declared ${size} bytes; nothing was stored`);
  }
}
