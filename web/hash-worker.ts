/**
 * The upload Worker: reads a File (reporting progress) and hashes it with Web Crypto
 * (crypto.subtle.digest), off the page's main thread. Only the hash goes back: the page
 * then sends the File itself (`xhr.send(file)`), which the browser streams from disk.
 *
 * In:  { file: File }
 * Out: { type: 'progress', read: number } … then { type: 'done', sha256 }
 *      or { type: 'error', message }.
 */
import { sha256Hex } from '../internal/sdk/put-body.js';

interface Scope {
  onmessage: ((e: MessageEvent<{ file: File }>) => void) | null;
  postMessage(msg: unknown): void;
}
const scope = self as unknown as Scope;

scope.onmessage = async (e) => {
  const { file } = e.data;
  try {
    const data = new Uint8Array(file.size);
    let read = 0;
    let reported = 0;
    const reader = (file.stream() as ReadableStream<Uint8Array>).getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (read + value.length > data.length) throw new Error(`the file grew past ${file.size} bytes`);
      data.set(value, read);
      read += value.length;
      if (read - reported >= 1 << 20) {
        reported = read;
        scope.postMessage({ type: 'progress', read });
      }
    }
    if (read !== file.size) throw new Error(`read ${read} of ${file.size} bytes (the file changed?)`);
    scope.postMessage({ type: 'done', sha256: await sha256Hex(data) });
  } catch (err) {
    scope.postMessage({ type: 'error', message: err instanceof Error ? err.message : String(err) });
  }
};
