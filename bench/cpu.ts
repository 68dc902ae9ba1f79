// CPU time from /proc (Linux) of a process and every descendant — what a load cost
// the whole local cluster (servers, Envoy, Redis and the client).
// On a shared machine wall-clock throughput measures the share of the cores a run
// got; CPU time per operation does not depend on what else runs.
import { readdirSync, readFileSync } from 'node:fs';

/** USER_HZ: clock ticks per second of /proc/<pid>/stat times (100 on Linux). */
const TICKS = 100;

/** ppid and user + system CPU seconds of `pid` from /proc/<pid>/stat; undefined once gone. */
function statOf(pid: number): { ppid: number; cpu: number } | undefined {
  let f: string;
  try {
    f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // After "pid (comm) ": field 3 is state, so field n is rest[n - 3]; comm may hold spaces.
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return { ppid: Number(rest[1]), cpu: (Number(rest[11]) + Number(rest[12])) / TICKS };
}

/** user + system CPU seconds of `pid` alone; undefined once it is gone. */
export function processCpuSeconds(pid: number): number | undefined {
  return statOf(pid)?.cpu;
}

/**
 * CPU seconds used so far by `root` and every live descendant (a process that
 * exited is no longer counted: take differences over periods in which none exits).
 */
export function treeCpuSeconds(root: number = process.pid): number {
  const children = new Map<number, number[]>();
  const cpu = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    const s = statOf(pid);
    if (!s) continue;
    cpu.set(pid, s.cpu);
    const list = children.get(s.ppid) ?? [];
    list.push(pid);
    children.set(s.ppid, list);
  }
  let total = 0;
  const todo = [root];
  for (let pid = todo.pop(); pid !== undefined; pid = todo.pop()) {
    total += cpu.get(pid) ?? 0;
    todo.push(...(children.get(pid) ?? []));
  }
  return total;
}
