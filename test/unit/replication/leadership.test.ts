import { describe, expect, it } from 'vitest';
import type { LeaseEvent } from '../../../internal/lease/lease-keeper.js';
import { Leadership, type Lease } from '../../../internal/replication/leadership.js';

/** A lease driven by the test: emit() plays the keeper's events. */
function fakeLease() {
  const listeners: ((e: LeaseEvent) => void)[] = [];
  let valid = true;
  const lease: Lease = {
    on: (l) => {
      listeners.push(l);
      return () => {};
    },
    start: () => {},
    stop: async () => {},
    isValid: () => valid,
  };
  return {
    lease,
    emit: (e: LeaseEvent) => {
      for (const l of listeners) l(e);
    },
    setValid: (v: boolean) => {
      valid = v;
    },
  };
}

function watch(lease: Lease | undefined) {
  const calls: string[] = [];
  let signal: AbortSignal | undefined;
  const lead = new Leadership(lease, {
    activate: (term, s) => {
      calls.push(`activate ${term}`);
      signal = s;
    },
    deactivate: (reason) => calls.push(`deactivate ${reason}`),
  });
  return { lead, calls, signal: () => signal };
}

describe('leadership (the manager lease)', () => {
  it('without a lease keeper: active at once at term 0, until stopped', async () => {
    const { lead, calls, signal } = watch(undefined);
    lead.start();
    expect(lead.active && lead.acting()).toBe(true);
    expect(lead.term).toBe(0n);
    await lead.stop();
    expect(calls).toEqual(['activate 0', 'deactivate shutting down']);
    expect(signal()?.aborted).toBe(true);
    expect(lead.acting()).toBe(false);
  });

  it('follows the lease: acquired once per term, acting only while locally valid, lost ends streams and the signal', () => {
    const f = fakeLease();
    const { lead, calls, signal } = watch(f.lease);
    lead.start();
    expect(lead.active).toBe(false);
    f.emit({ type: 'acquired', term: 7n });
    f.emit({ type: 'acquired', term: 8n });
    expect(lead.term).toBe(7n);
    const stream = lead.openStream();
    const closed = lead.openStream();
    lead.closeStream(closed);
    f.setValid(false);
    expect(lead.active).toBe(true);
    expect(lead.acting()).toBe(false);
    f.setValid(true);
    expect(lead.acting()).toBe(true);
    f.emit({ type: 'lost', term: 7n, reason: 'expired' });
    f.emit({ type: 'lost', term: 7n, reason: 'again' });
    expect(calls).toEqual(['activate 7', 'deactivate expired']);
    expect(signal()?.aborted).toBe(true);
    expect(stream.signal.aborted).toBe(true);
    expect(closed.signal.aborted).toBe(false);
    expect(lead.acting()).toBe(false);
  });
});
