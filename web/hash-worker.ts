/**
 * The upload Worker: reads a File (reporting progress), hashes it with Web Crypto
 * (crypto.subtle.digest) and encodes the Put request, all off the page's main
 * thread; the encoded bytes are transferred back (no copy) for sending.
 *
 * In:  { file: File, contentType: string }
 * Out: { type: 'progress', read: number } … then { type: 'done', sha256, body }
 *      or { type: 'error', message }.
 */
import { encodePutRequest, sha256Hex } from '../internal/sdk/put-body.js';

interface Scope {
  onmessage: ((e: MessageEvent<{ file: File; contentType: string }>) => void) | null;
  postMessage(msg: unknown, transfer?: Transferable[]): void;
}
const scope = self as unknown as Scope;

scope.onmessage = async (e) => {
  const { file, contentType } = e.data;
  try {
    const data = new Uint8Array(file.size);
    let read = 0;
    let reported = 0;
    const reader = (file.stream() as ReadableStream<Uint8Array>).getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      data.set(value, read);
      read += value.length;
      if (read - reported >= 1 << 20) {
        reported = read;
        scope.postMessage({ type: 'progress', read });
      }
    }
    if (read !== file.size) throw new Error(`read ${read} of ${file.size} bytes (the file changed?)`);
    const sha256 = await sha256Hex(data);
    const body = encodePutRequest(data, sha256, { contentType });
    scope.postMessage({ type: 'done', sha256, body }, [body.buffer]);
  } catch (err) {
    scope.postMessage({ type: 'error', message: err instanceof Error ? err.message : String(err) });
  }
};
