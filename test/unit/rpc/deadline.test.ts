import { getEventListeners } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Code, ConnectError } from '@connectrpc/connect';
import { describe, expect, it } from 'vitest';
import { deadlineSignal } from '../../../internal/rpc/deadline.js';

v8.setFlagsFromString('--expose_gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Resolves with the signal's reason once it aborts (the way a pending call waits on it). */
const aborted = (s: AbortSignal) =>
  new Promise<unknown>((resolve) => s.addEventListener('abort', () => resolve(s.reason), { once: true }));

describe('deadlineSignal', () => {
  it('aborts DEADLINE_EXCEEDED after its time even when only a waiting call refers to it and a GC runs', async () => {
    const lease = new AbortController();
    const waits = Array.from({ length: 20 }, () => aborted(deadlineSignal(200, lease.signal, 'a move')));
    await sleep(20);
    gc();
    gc();
    const reasons = await Promise.race([Promise.all(waits), sleep(3_000).then(() => 'still waiting')]);
    expect(reasons, 'a deadline never fired').not.toBe('still waiting');
    for (const r of reasons as unknown[]) {
      expect(r).toBeInstanceOf(ConnectError);
      expect((r as ConnectError).code).toBe(Code.DeadlineExceeded);
      expect((r as ConnectError).rawMessage).toBe('a move: the deadline of 200 ms expired');
    }
    // Every deadline that fired took its listener off the long-lived parent.
    expect(getEventListeners(lease.signal, 'abort')).toHaveLength(0);
  });

  it('aborts with the parent’s reason when the parent aborts first, and at once when it already has', async () => {
    const lease = new AbortController();
    const s = deadlineSignal(60_000, lease.signal);
    const got = aborted(s);
    lease.abort(new Error('lease lost'));
    expect(((await got) as Error).message).toBe('lease lost');
    const late = deadlineSignal(60_000, lease.signal);
    expect(late.aborted).toBe(true);
    expect((late.reason as Error).message).toBe('lease lost');
  });

  it('works without a parent', async () => {
    expect(((await aborted(deadlineSignal(20))) as ConnectError).code).toBe(Code.DeadlineExceeded);
  });
});

describe('the source', () => {
  // A fresh AbortSignal.timeout() inside AbortSignal.any() is the bug deadlineSignal avoids:
  // on Node 20 it can be garbage-collected and never fire (nodejs/node#57736).
  it('never combines AbortSignal.timeout() with AbortSignal.any()', () => {
    const offenders: string[] = [];
    const walk = (dir: string): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (p.endsWith('.ts')) {
          const text = readFileSync(p, 'utf8');
          if (/AbortSignal\.any\(\[[^\]]*AbortSignal\.timeout\(/s.test(text)) offenders.push(p);
        }
      }
    };
    for (const d of ['internal', 'cmd', 'packages']) walk(d);
    expect(offenders).toEqual([]);
  });
});
