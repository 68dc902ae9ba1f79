import { readdir, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { createClient } from '@connectrpc/connect';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { ReplicationService } from '../../gen/haystack/v1/replication_pb.js';
import { httpsGet } from '../helpers/pki.js';
import type { ServerProcess } from '../helpers/tools.js';
import { readLog } from '../netns/stale-leader.js';
import type { Fault, FaultCluster } from './harness.js';

/**
 * Pause faults (issue 14): SIGSTOP a process — its sockets stay open and nothing
 * answers, unlike a kill — then SIGCONT it. Each runs under the mixed load of
 * runFaultSequence and is checked by the op-log checker like the kills.
 */

/** SIGSTOP or SIGCONT one process (a no-op once it has exited). */
export function signal(p: ServerProcess | undefined, sig: 'SIGSTOP' | 'SIGCONT'): void {
  if (p && p.child.exitCode === null && p.child.signalCode === null) p.child.kill(sig);
}

/** Polls `probe` every `everyMs` until it returns a value; undefined after `withinMs`. */
async function poll<T>(probe: () => Promise<T | undefined>, withinMs: number, everyMs: number) {
  const deadline = Date.now() + withinMs;
  while (Date.now() < deadline) {
    const v = await probe();
    if (v !== undefined) return v;
    await sleep(everyMs);
  }
  return undefined;
}

/** Total bytes of a store's volume files (it grows as a write's bytes land; 0: none). */
async function volumeBytes(dir: string): Promise<number> {
  const names = (await readdir(dir)).filter((n) => n.endsWith('.dat'));
  const sizes = await Promise.all(
    names.map((n) =>
      stat(`${dir}/${n}`).then(
        (s) => s.size,
        () => 0,
      ),
    ),
  );
  return sizes.reduce((a, b) => a + b, 0);
}

/**
 * Indexes of the stores that hold volumes. Every store should (the fault cluster
 * sets PLACEMENT_EXPECTED_STORES), but one that registered after
 * PLACEMENT_EXPECTED_WAIT gets none until the automatic balance (PLACEMENT_AUTO_BALANCE_AFTER) — pausing
 * that one would test nothing (the suite's `pause-store` once did so).
 */
async function storesWithData(fc: FaultCluster): Promise<number[]> {
  const found = await poll(
    async () => {
      const sizes = await Promise.all(
        fc.cluster.stores.map((_, i) => volumeBytes(fc.storeDataDir(i)).catch(() => 0)),
      );
      const out = sizes.flatMap((n, i) => (n > 0 ? [i] : []));
      return out.length > 0 ? out : undefined;
    },
    60_000,
    200,
  );
  if (!found) throw new Error('no store holds a volume 60 s into the load');
  return found;
}

/** A pause of the whole outage, at whatever point the load is (of the first store holding data). */
function pauseStore(): Fault {
  let victim = -1;
  return {
    name: 'paused store',
    async kill(fc) {
      victim = (await storesWithData(fc))[0] as number;
      signal(fc.cluster.stores[victim], 'SIGSTOP');
      return `store-${victim} (SIGSTOP)`;
    },
    async restart(fc) {
      signal(fc.cluster.stores[victim], 'SIGCONT');
    },
  };
}

/**
 * SIGSTOP a store the moment a write's bytes land in its volume (the file grew:
 * the needle is being appended, its fsync and acknowledgement still to come), for
 * the outage, then SIGCONT. The write in flight must end acknowledged with every
 * replica or of unknown outcome, never acknowledged and lost.
 */
function pauseStoreMidWrite(): Fault {
  let victim = -1;
  return {
    name: 'store paused mid-write',
    async kill(fc) {
      victim = (await storesWithData(fc)).at(-1) as number;
      const dir = fc.storeDataDir(victim);
      const before = await volumeBytes(dir);
      const grew = await poll(
        async () => {
          const now = await volumeBytes(dir);
          if (now === before) return undefined;
          signal(fc.cluster.stores[victim], 'SIGSTOP');
          return now - before;
        },
        30_000,
        5,
      );
      if (grew === undefined) throw new Error(`no write landed on store-${victim} within 30 s`);
      return `store-${victim} (SIGSTOP while a write landed: its volume grew by ${grew} bytes)`;
    },
    async restart(fc) {
      signal(fc.cluster.stores[victim], 'SIGCONT');
    },
  };
}

/** Whether the active manager's metrics show a backfill copying to `storeId`. */
async function backfilling(fc: FaultCluster, storeId: string): Promise<boolean> {
  const i = await fc.activeManager(5_000).catch(() => -1);
  if (i < 0) return false;
  const { body } = await httpsGet(`https://${fc.managerAddress(i)}/metrics`).catch(() => ({ body: '' }));
  return new RegExp(`^haystack_replication_backfill_needles\\{[^}]*store="${storeId}"`, 'm').test(body);
}

/**
 * SIGSTOP a store mid-replication: first paused until the directory marks it DOWN
 * (its memberships become JOINING and writes go on without it), then resumed; the
 * moment the manager's backfill toward it is under way (its
 * `haystack_replication_backfill_needles` gauge names the store), paused again for
 * the outage, then SIGCONT. The backfill must resume and bring it up to date.
 */
function pauseStoreMidReplication(): Fault {
  let victim = -1;
  return {
    name: 'store paused mid-replication',
    async kill(fc) {
      victim = (await storesWithData(fc))[0] as number;
      const storeId = `store-${victim}`;
      const p = fc.cluster.stores[victim];
      signal(p, 'SIGSTOP');
      const down = await poll(
        async () => {
          const s = await fc.directory.getClusterStatus().catch(() => undefined);
          const rec = s?.stores.find((x) => x.storeId === storeId);
          return rec?.health === StoreHealth.DOWN ? true : undefined;
        },
        60_000,
        200,
      );
      // Writes skip it now; let some land elsewhere so the backfill has needles to copy.
      await sleep(2_000);
      signal(p, 'SIGCONT');
      if (!down) throw new Error(`${storeId} was not marked DOWN within 60 s of SIGSTOP`);
      const t0 = Date.now();
      const copying = await poll(
        async () => ((await backfilling(fc, storeId)) ? true : undefined),
        60_000,
        20,
      );
      if (!copying) throw new Error(`no backfill toward ${storeId} seen within 60 s of SIGCONT`);
      signal(p, 'SIGSTOP');
      return `${storeId} (SIGSTOP until DOWN, SIGCONT, SIGSTOP again ${Date.now() - t0} ms later with the backfill to it under way)`;
    },
    async restart(fc) {
      signal(fc.cluster.stores[victim], 'SIGCONT');
    },
  };
}

/** A manager's own view: active, and in which lease term (undefined: no answer). */
async function managerState(
  fc: FaultCluster,
  i: number,
): Promise<{ active: boolean; term: bigint } | undefined> {
  const c = createClient(ReplicationService, fc.cluster.transport(fc.managerAddress(i), 'replication'));
  const s = await c.getStats({}, { timeoutMs: 1000 }).catch(() => undefined);
  return s ? { active: s.active, term: s.term } : undefined;
}

/**
 * Per store, the replication-manager fencing terms it accepted (in order) and the
 * calls it refused as coming from a deposed manager, from its log.
 */
async function managerFencing(
  fc: FaultCluster,
): Promise<Array<{ store: string; accepted: number[]; refused: number[] }>> {
  return Promise.all(
    fc.cluster.stores.map(async (_, i) => {
      const lines = await readLog({ dataDir: fc.cluster.dataDir }, `store-${i}`);
      const mine = lines.filter((l) => l.issuer === 'manager');
      return {
        store: `store-${i}`,
        accepted: mine.filter((l) => l.msg === 'fencing term advanced').map((l) => Number(l.term)),
        refused: mine.filter((l) => l.msg === 'fenced out a deposed sender').map((l) => Number(l.term)),
      };
    }),
  );
}

/**
 * SIGSTOP the active replication manager until the standby has taken the lease in
 * a higher term, keep it paused for the outage, SIGCONT. Then (`after` throws
 * otherwise): the resumed manager no longer claims to be active in its old term,
 * and every store's manager fencing terms only rose — a store refuses ("fenced
 * out a deposed sender") any call the old manager made with its stale term.
 */
function pauseManager(): Fault {
  let ctx: { victim: number; oldTerm: bigint; newTerm: bigint } | undefined;
  return {
    name: 'active replication manager paused past its lease',
    async kill(fc) {
      const victim = await fc.activeManager();
      const old = await managerState(fc, victim);
      if (!old?.active) throw new Error(`replication-${victim} is not active any more`);
      const p = fc.managers[victim];
      signal(p, 'SIGSTOP');
      const t0 = Date.now();
      const next = await poll(
        async () => {
          for (let i = 0; i < fc.managers.length; i++) {
            if (i === victim) continue;
            const s = await managerState(fc, i);
            if (s?.active && s.term > old.term) return { i, term: s.term };
          }
          return undefined;
        },
        60_000,
        100,
      );
      if (!next) {
        signal(p, 'SIGCONT');
        throw new Error(`no standby manager took over within 60 s of pausing replication-${victim}`);
      }
      ctx = { victim, oldTerm: old.term, newTerm: next.term };
      return `replication-${victim} (active in term ${old.term}, SIGSTOP past its lease); replication-${next.i} took over in term ${next.term} after ${Date.now() - t0} ms`;
    },
    async restart(fc) {
      if (ctx) signal(fc.managers[ctx.victim], 'SIGCONT');
    },
    async after(fc) {
      if (!ctx) throw new Error('the manager pause did not run');
      const { victim, oldTerm, newTerm } = ctx;
      // It answers again, and not as the active manager of its old term.
      const seen = await poll(
        async () => {
          const s = await managerState(fc, victim);
          return s && !(s.active && s.term <= oldTerm) ? s : undefined;
        },
        30_000,
        100,
      );
      if (!seen) {
        throw new Error(
          `replication-${victim} still claims to be active in term ${oldTerm} 30 s after SIGCONT`,
        );
      }
      const fencing = await managerFencing(fc);
      const refused = fencing.reduce((n, f) => n + f.refused.filter((t) => t === Number(oldTerm)).length, 0);
      for (const f of fencing) {
        for (let k = 1; k < f.accepted.length; k++) {
          if ((f.accepted[k] as number) <= (f.accepted[k - 1] as number)) {
            throw new Error(
              `${f.store} accepted manager term ${f.accepted[k]} after ${f.accepted[k - 1]} (old manager's term ${oldTerm}, new ${newTerm})`,
            );
          }
        }
      }
      return `after SIGCONT replication-${victim} answers ${seen.active ? 'active' : 'standby'} in term ${seen.term}; stores refused ${refused} call(s) of its old term ${oldTerm}`;
    },
  };
}

/** The pause faults, by the names the suites list. */
export const PAUSES: Record<string, () => Fault> = {
  'pause-store': () => pauseStore(),
  'pause-store-write': () => pauseStoreMidWrite(),
  'pause-store-replication': () => pauseStoreMidReplication(),
  'pause-replication': () => pauseManager(),
  'pause-leader': () => {
    let victim = -1;
    return {
      name: 'paused leader directory',
      async kill(fc) {
        victim = await fc.cluster.leaderIndex();
        signal(fc.cluster.directories[victim], 'SIGSTOP');
        return `directory-${victim} (leader, SIGSTOP past its lease)`;
      },
      async restart(fc) {
        signal(fc.cluster.directories[victim], 'SIGCONT');
      },
    };
  },
};
