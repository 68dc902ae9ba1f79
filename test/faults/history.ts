/**
 * A linearizability checker for Haystack's client-visible contract, per blob: a
 * write-once register with deletes. Every operation is recorded with its
 * invocation and completion time (ms, one clock: the test process's); the checker
 * searches for a total order consistent with real time (an operation that
 * completed before another was invoked comes first) in which every operation's
 * result is what the model allows.
 *
 * The search is Wing & Gong's ("Testing and verifying concurrent objects", JPDC
 * 1993) with Lowe's memoization of (linearized set, model state) ("Testing for
 * linearizability", CCPE 2017) — the algorithm of Porcupine
 * (github.com/anishathalye/porcupine). Histories are partitioned by blob id first:
 * linearizability is local (Herlihy & Wing 1990), so each blob is checked alone and
 * per-blob histories stay small.
 *
 * Operations whose outcome is unknown (a write or delete that failed: it may or may
 * not have happened) complete at +∞, as Porcupine models them: they may take
 * effect at any point after their invocation, or never. Reads that failed (no
 * answer) tell nothing and are left out.
 */

/** The register's states: never written, holding a value (a SHA-256), deleted. */
export type RegState = { kind: 'absent' } | { kind: 'present'; value: string } | { kind: 'deleted' };

export type OpInput = { op: 'write'; value: string } | { op: 'read' } | { op: 'delete' };

/**
 * What the client saw: `ok` (write or delete acknowledged), `value` (a read's
 * bytes, as their SHA-256), `not-found` (a read answered NOT_FOUND), `gone` (a
 * delete answered "there was none": with client retries, an earlier attempt of the
 * same call may have deleted it, so it only says the blob is absent afterwards),
 * `unknown` (a write or delete failed otherwise).
 */
export type OpOutput =
  | { result: 'ok' }
  | { result: 'gone' }
  | { result: 'value'; value: string }
  | { result: 'not-found' }
  | { result: 'unknown' };

export interface HistoryOp {
  /** Blob id (the partition key). */
  key: string;
  input: OpInput;
  output: OpOutput;
  /** ms; `end` is ignored for unknown outcomes (they complete at +∞). */
  start: number;
  end: number;
  /** Who issued it (a gateway, a client loop), for the anomaly report. */
  client?: string;
}

/** One step of the model: whether `input` may return `output` in `s`, and the state after. */
export function step(s: RegState, input: OpInput, output: OpOutput): RegState | null {
  const unknown = output.result === 'unknown';
  switch (input.op) {
    case 'write': {
      // Write-once: the same value again is an idempotent retry; another value is refused.
      if (s.kind === 'present' && s.value !== input.value) return unknown ? s : null;
      if (output.result !== 'ok' && !unknown) return null;
      return { kind: 'present', value: input.value };
    }
    case 'read':
      if (output.result === 'value') return s.kind === 'present' && s.value === output.value ? s : null;
      if (output.result === 'not-found') return s.kind === 'present' ? null : s;
      return null;
    case 'delete':
      if (output.result === 'ok' || unknown)
        return s.kind === 'present' ? { kind: 'deleted' } : unknown ? s : null;
      if (output.result === 'gone') return s.kind === 'present' ? { kind: 'deleted' } : s;
      return null;
  }
}

const stateKey = (s: RegState) => (s.kind === 'present' ? `p:${s.value}` : s.kind);

export interface KeyVerdict {
  key: string;
  ok: boolean;
  ops: HistoryOp[];
  /** On failure: the longest prefix of operations that could be linearized, and the ones left. */
  longestPrefix?: HistoryOp[];
  stuckAt?: HistoryOp[];
}

interface Entry {
  call: boolean;
  id: number;
  time: number;
  match?: Entry;
  prev?: Entry;
  next?: Entry;
}

/** Checks one key's history (Wing & Gong with memoization); exported for the unit tests. */
export function checkKey(key: string, ops: HistoryOp[]): KeyVerdict {
  const end = (o: HistoryOp) => (o.output.result === 'unknown' ? Number.POSITIVE_INFINITY : o.end);
  // Events by time; at equal times calls first (the permissive choice: touching ops overlap).
  const events: Entry[] = [];
  ops.forEach((o, id) => {
    const c: Entry = { call: true, id, time: o.start };
    const r: Entry = { call: false, id, time: end(o) };
    c.match = r;
    events.push(c, r);
  });
  events.sort((a, b) => a.time - b.time || (a.call === b.call ? 0 : a.call ? -1 : 1));
  const head: Entry = { call: false, id: -1, time: Number.NEGATIVE_INFINITY };
  let prev = head;
  for (const e of events) {
    prev.next = e;
    e.prev = prev;
    prev = e;
  }
  const lift = (e: Entry) => {
    // Unlinks a call and its return.
    (e.prev as Entry).next = e.next;
    if (e.next) e.next.prev = e.prev;
    const m = e.match as Entry;
    (m.prev as Entry).next = m.next;
    if (m.next) m.next.prev = m.prev;
  };
  const unlift = (e: Entry) => {
    const m = e.match as Entry;
    (m.prev as Entry).next = m;
    if (m.next) m.next.prev = m;
    (e.prev as Entry).next = e;
    if (e.next) e.next.prev = e;
  };
  const linearized = new Uint8Array(ops.length);
  const bits = () => Buffer.from(linearized).toString('base64');
  const cache = new Set<string>();
  const stack: { entry: Entry; state: RegState }[] = [];
  let state: RegState = { kind: 'absent' };
  let best: number[] = [];
  let entry = head.next;
  while (head.next) {
    if (!entry) break;
    if (entry.call) {
      const o = ops[entry.id] as HistoryOp;
      const next = step(state, o.input, o.output);
      if (next) {
        linearized[entry.id] = 1;
        const k = `${bits()}|${stateKey(next)}`;
        if (!cache.has(k)) {
          cache.add(k);
          stack.push({ entry, state });
          if (stack.length > best.length) best = stack.map((s) => s.entry.id);
          state = next;
          lift(entry);
          entry = head.next;
          continue;
        }
        linearized[entry.id] = 0;
      }
      entry = entry.next;
    } else {
      // A return reached: its call could not be placed before it. Backtrack.
      const top = stack.pop();
      if (!top) {
        const placed = new Set(best);
        return {
          key,
          ok: false,
          ops,
          longestPrefix: best.map((i) => ops[i] as HistoryOp),
          stuckAt: ops.filter((_, i) => !placed.has(i)),
        };
      }
      state = top.state;
      linearized[top.entry.id] = 0;
      unlift(top.entry);
      entry = top.entry.next;
    }
  }
  return { key, ok: true, ops };
}

/** Checks a whole history, blob by blob; returns the keys that are not linearizable. */
export function checkHistory(ops: HistoryOp[]): { keys: number; ops: number; anomalies: KeyVerdict[] } {
  const byKey = new Map<string, HistoryOp[]>();
  for (const o of ops) {
    if (o.input.op === 'read' && o.output.result === 'unknown') continue;
    const l = byKey.get(o.key) ?? [];
    if (l.length === 0) byKey.set(o.key, l);
    l.push(o);
  }
  const anomalies: KeyVerdict[] = [];
  for (const [key, l] of byKey) {
    const v = checkKey(key, l);
    if (!v.ok) anomalies.push(v);
  }
  return { keys: byKey.size, ops: ops.length, anomalies };
}

/** A readable account of a non-linearizable key: its operations in time, and where the search got stuck. */
export function describeAnomaly(v: KeyVerdict): string {
  const t0 = Math.min(...v.ops.map((o) => o.start));
  const short = (s: string) => s.slice(0, 12);
  const fmt = (o: HistoryOp) => {
    const inp = o.input.op === 'write' ? `write(${short(o.input.value)})` : `${o.input.op}()`;
    const out =
      o.output.result === 'value' ? `→ ${short(o.output.value)}` : `→ ${o.output.result.toUpperCase()}`;
    const endMs = o.output.result === 'unknown' ? '∞' : `${o.end - t0}`;
    return `  [${o.start - t0} .. ${endMs}] ms ${o.client ?? ''} ${inp} ${out}`;
  };
  const ordered = [...v.ops].sort((a, b) => a.start - b.start);
  return [
    `blob ${v.key}: not linearizable as a write-once register with deletes`,
    'history (ms from the first invocation):',
    ...ordered.map(fmt),
    'longest linearizable prefix:',
    ...(v.longestPrefix ?? []).map(fmt),
    'no valid place for:',
    ...(v.stuckAt ?? []).map(fmt),
  ].join('\n');
}
