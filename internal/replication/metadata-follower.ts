import { ConnectError } from '@connectrpc/connect';
import { sleep } from '../common/sleep.js';
import type { Logger } from '../server/logger.js';
import type { DirectoryCalls } from './directory-api.js';
import { LogGapError, type MetadataMirror, type MirrorChange } from './mirror.js';

/**
 * Follows the directory's metadata log into the mirror (every instance, active or
 * not): WatchMetadata from the entry after the last applied one (from 0, which
 * sends a snapshot first, while the mirror is not loaded), each snapshot and
 * change handed on as it is applied. A broken stream moves to the next directory
 * and retries after 100 ms doubling to 2 s; a gap in the log drops the mirror's
 * view so that the next stream starts with a snapshot. Ends when `stop` fires;
 * never throws.
 */
export async function followMetadata(o: {
  directory: DirectoryCalls;
  mirror: MetadataMirror;
  managerId: string;
  log: Logger;
  stop: AbortSignal;
  onSnapshot(): void;
  onChange(c: MirrorChange): void;
}): Promise<void> {
  const { directory, mirror, log, stop } = o;
  let backoff = 100;
  while (!stop.aborted) {
    const ctl = new AbortController();
    const onStop = () => ctl.abort();
    stop.addEventListener('abort', onStop, { once: true });
    const from = mirror.loaded ? mirror.appliedIndex + 1n : 0n;
    const { address, stream } = directory.watch(from, o.managerId, ctl.signal);
    try {
      for await (const msg of stream) {
        backoff = 100;
        if (msg.msg.case === 'snapshot') {
          mirror.applySnapshot(msg.msg.value);
          log.info({ directory: address, index: String(msg.msg.value.index) }, 'metadata snapshot loaded');
          o.onSnapshot();
        } else if (msg.msg.case === 'entries') {
          for (const e of msg.msg.value.entries) o.onChange(mirror.apply(e));
        }
      }
    } catch (err) {
      if (err instanceof LogGapError) {
        log.warn({ err: err.message }, 'metadata gap: asking for a snapshot');
        mirror.loaded = false;
      } else if (!stop.aborted) {
        log.debug({ directory: address, err: ConnectError.from(err).message }, 'metadata stream ended');
      }
    } finally {
      stop.removeEventListener('abort', onStop);
      ctl.abort();
    }
    if (stop.aborted) return;
    directory.rotate();
    await sleep(backoff, stop);
    backoff = Math.min(2_000, backoff * 2);
  }
}
