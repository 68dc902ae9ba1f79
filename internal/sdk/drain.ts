/** What `drained` needs of a writable: a Node stream, an HTTP/2 stream or an HTTP response. */
export interface DrainEmitter {
  on(event: 'drain' | 'close', listener: () => void): unknown;
  off(event: 'drain' | 'close', listener: () => void): unknown;
}

/**
 * Resolves once `w` takes writes again ('drain') or never will ('close'): after a
 * `write()` that returned false. It never rejects; the caller checks which happened
 * (`destroyed`, or the stream's 'error').
 */
export function drained(w: DrainEmitter): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      w.off('drain', done);
      w.off('close', done);
      resolve();
    };
    w.on('drain', done);
    w.on('close', done);
  });
}
