import { Code, ConnectError } from '@connectrpc/connect';

/**
 * An AbortSignal for one call or move: aborts with DEADLINE_EXCEEDED (a
 * ConnectError naming `what` and `ms`) after `ms` milliseconds, or earlier with
 * `parent`'s reason when `parent` aborts (a lease lost, the caller gone).
 *
 * Not AbortSignal.any() over a fresh AbortSignal.timeout(): on Node 20 a timeout
 * signal that only an `any()` composite refers to can be garbage-collected
 * before it fires (nodejs/node#57736), and the composite then never aborts: the
 * call waits forever. Here the timer holds the controller until it fires; the
 * listener on `parent` is removed when it does (so a long-lived parent holds at
 * most the deadlines still running).
 */
export function deadlineSignal(ms: number, parent?: AbortSignal, what = 'the call'): AbortSignal {
  const ctl = new AbortController();
  if (parent?.aborted) {
    ctl.abort(parent.reason);
    return ctl.signal;
  }
  const onParent = () => {
    clearTimeout(timer);
    ctl.abort(parent?.reason);
  };
  const timer = setTimeout(() => {
    parent?.removeEventListener('abort', onParent);
    ctl.abort(new ConnectError(`${what}: the deadline of ${ms} ms expired`, Code.DeadlineExceeded));
  }, ms);
  timer.unref();
  parent?.addEventListener('abort', onParent, { once: true });
  return ctl.signal;
}
