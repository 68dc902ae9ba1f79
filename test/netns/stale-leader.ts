import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { type NetnsCluster, sleep } from './cluster.js';
import type { Partition } from './partitions.js';

export interface StaleLeaderResult {
  old: string;
  oldTerm: number;
  newLeader: string;
  newTerm: number;
  pausedMs: number;
  audit: LeadershipAudit;
  /** Warnings the deposed leader logged after SIGCONT (its step-down). */
  afterResume: string[];
}

const READY = 'leader ready: serving writes';

/** The term and time of the last "leader ready" line `name` logged (0: none). */
async function lastReadyTerm(nc: NetnsCluster, name: string): Promise<{ term: number; time: number }> {
  const lines = (await readLog(nc, name)).filter((l) => l.msg === READY);
  const l = lines[lines.length - 1];
  return l ? { term: Number(l.term), time: l.time } : { term: 0, time: 0 };
}

/**
 * The stale leader (issue 14): SIGSTOP the leader directory past its lease, wait
 * until another directory has taken office in a higher term (its "leader ready"
 * comes after its LeaderChanged entry committed on a majority), keep it paused for
 * the outage while the load goes on under the new term, then SIGCONT. `audit`
 * (after the run) reads the logs: one leader per term, no commit of the old term
 * after the new leader was ready, stores' fencing terms only rising, and the old
 * leader stepped down once it ran again.
 */
export function staleLeader(): Partition {
  let ctx: { li: number; old: string; oldTerm: number; pausedAt: number; resumedAt: number } | undefined;
  let next: { newLeader: string; newTerm: number; newReadyAt: number } | undefined;
  const p: Partition = {
    name: 'leader directory paused past its lease (SIGSTOP), a new leader commits, SIGCONT',
    async apply(nc: NetnsCluster): Promise<string> {
      const li = await nc.leaderIndex(120_000);
      const old = nc.names.directories[li] as string;
      const oldTerm = (await lastReadyTerm(nc, old)).term;
      nc.directories[li]?.child.kill('SIGSTOP');
      ctx = { li, old, oldTerm, pausedAt: Date.now(), resumedAt: 0 };
      const deadline = Date.now() + 60_000;
      while (!next) {
        for (const d of nc.names.directories) {
          if (d === old) continue;
          const r = await lastReadyTerm(nc, d);
          if (r.term > oldTerm) next = { newLeader: d, newTerm: r.term, newReadyAt: r.time };
        }
        if (next) break;
        if (Date.now() > deadline) {
          nc.directories[li]?.child.kill('SIGCONT');
          throw new Error(`no new leader within 60 s of pausing ${old}; logs in ${nc.dataDir}`);
        }
        await sleep(200);
      }
      return `SIGSTOP ${old} (leader of term ${oldTerm}); ${next.newLeader} took office in term ${next.newTerm} after ${Date.now() - ctx.pausedAt} ms`;
    },
    async heal(nc: NetnsCluster): Promise<void> {
      if (!ctx) return;
      // Taken before the signal: the resumed leader may log its step-down before this
      // (niced, loaded) process reads the clock again — the reduced run of 11:12 did.
      ctx.resumedAt = Date.now();
      nc.directories[ctx.li]?.child.kill('SIGCONT');
    },
    async audit(nc: NetnsCluster): Promise<{ problems: string[]; detail: StaleLeaderResult }> {
      if (!ctx || !next) throw new Error('the stale-leader fault did not run');
      const resumedAt = ctx.resumedAt;
      const afterResume = (await readLog(nc, ctx.old))
        .filter((l) => l.time >= resumedAt && l.level >= 40 && l.msg !== 'rpc failed')
        .map((l) => `${l.msg} ${JSON.stringify({ term: l.term, reason: l.reason })}`);
      const audit = await auditLeadership(nc, {
        old: ctx.old,
        oldTerm: ctx.oldTerm,
        newReadyAt: next.newReadyAt,
      });
      if (!afterResume.some((l) => /stepping down|giving up/.test(l)))
        audit.problems.push(`${ctx.old} logged no step-down after SIGCONT`);
      const detail: StaleLeaderResult = {
        old: ctx.old,
        oldTerm: ctx.oldTerm,
        ...next,
        pausedMs: resumedAt - ctx.pausedAt,
        audit,
        afterResume,
      };
      return { problems: audit.problems, detail };
    },
  };
  return p;
}

export interface LogLine {
  time: number;
  level: number;
  msg: string;
  term?: string | number;
  [k: string]: unknown;
}

/** The JSON lines of a process's log file, `<dataDir>/<name>.log` (others skipped). */
export async function readLog(nc: { dataDir: string }, name: string): Promise<LogLine[]> {
  const text = await readFile(path.join(nc.dataDir, `${name}.log`), 'utf8').catch(() => '');
  const out: LogLine[] = [];
  for (const l of text.split('\n')) {
    if (!l.startsWith('{')) continue;
    try {
      out.push(JSON.parse(l) as LogLine);
    } catch {
      // a line cut by a kill
    }
  }
  return out;
}

export interface LeadershipAudit {
  /** term → directories that logged "leader ready" in it. */
  leadersByTerm: Record<string, string[]>;
  /** Commits the deposed leader logged in its old term after the new leader was ready. */
  lateCommits: string[];
  /** Per store: directory fencing terms it accepted, in order (a restart starts again), and what it refused. */
  storeTerms: Record<string, { accepted: number[]; refused: number[] }>;
  problems: string[];
}

/**
 * Reads the directories' and stores' logs after a stale-leader episode: at most one
 * directory took office per term; the deposed leader (`old`, which led `oldTerm`)
 * logged no commit in `oldTerm` after `newReadyAt` (when the next leader was ready);
 * every store's directory fencing terms only went up (a restarted store may take
 * the term it had again).
 */
export async function auditLeadership(
  nc: NetnsCluster,
  o: { old: string; oldTerm: number; newReadyAt: number },
): Promise<LeadershipAudit> {
  const problems: string[] = [];
  const leadersByTerm: Record<string, string[]> = {};
  const lateCommits: string[] = [];
  let commitLines = 0;
  for (const d of nc.names.directories) {
    for (const l of await readLog(nc, d)) {
      if (l.msg === 'committed') commitLines++;
      if (l.msg === 'leader ready: serving writes') {
        const t = String(l.term);
        leadersByTerm[t] = [...(leadersByTerm[t] ?? []), d];
      }
      if (d === o.old && l.msg === 'committed' && Number(l.term) === o.oldTerm && l.time >= o.newReadyAt) {
        lateCommits.push(`${d} committed index ${String(l.commitIndex)} of term ${o.oldTerm} at ${l.time}`);
      }
    }
  }
  // The audit reads log lines by message: if none are found (a message renamed, a log
  // level raised) it would see nothing and pass. Every run has leaders and commits.
  if (Object.keys(leadersByTerm).length === 0)
    problems.push('no "leader ready: serving writes" line in any directory log: the audit sees no leaders');
  if (commitLines === 0) problems.push('no "committed" line in any directory log: the audit sees no commits');
  for (const [t, ds] of Object.entries(leadersByTerm)) {
    if (new Set(ds).size > 1) problems.push(`term ${t} had ${ds.length} leaders: ${ds.join(', ')}`);
  }
  if (lateCommits.length > 0)
    problems.push(`the deposed leader committed: ${lateCommits.slice(0, 3).join('; ')}`);
  const storeTerms: LeadershipAudit['storeTerms'] = {};
  for (const s of nc.names.stores) {
    const accepted: number[] = [];
    const refused: number[] = [];
    const lines = await readLog(nc, s);
    for (const l of lines) {
      if (l.issuer !== 'directory') continue;
      if (l.msg === 'fencing term advanced') accepted.push(Number(l.term));
      if (l.msg === 'fenced out a deposed sender') refused.push(Number(l.term));
    }
    storeTerms[s] = { accepted, refused };
    if (accepted.length === 0)
      problems.push(`${s} logged no "fencing term advanced": the audit sees none of its fencing`);
    // The fence is durable (fencing-terms.ts), but the line is logged before the term is
    // on disk: a store killed between the two logs the same term again after its restart
    // ("store serving" comes first). So across a restart the same term may appear again,
    // never an older one; within one run, only higher ones.
    let restarted = false;
    let last = 0;
    for (const l of lines) {
      if (l.msg === 'store serving') restarted = last > 0;
      if (l.issuer !== 'directory' || l.msg !== 'fencing term advanced') continue;
      const t = Number(l.term);
      if (t < last || (t === last && !restarted))
        problems.push(
          `${s} accepted directory term ${t} after ${last}${restarted ? ' (after a restart)' : ''}`,
        );
      last = t;
      restarted = false;
    }
  }
  return { leadersByTerm, lateCommits, storeTerms, problems };
}
