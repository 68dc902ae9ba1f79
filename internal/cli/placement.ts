import { create } from '@bufbuild/protobuf';
import { type Client, Code, ConnectError, createClient } from '@connectrpc/connect';
import type { Command } from 'commander';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import {
  DirectoryService,
  type GetClusterStatusResponse,
  type StorePlacementLoad,
  StorePlacementLoadSchema,
} from '../../gen/haystack/v1/directory_pb.js';
import { sleep } from '../common/sleep.js';
import { grpcTransport } from '../sdk/index.js';
import { action, clientFor, type GlobalOpts, human, out } from './client.js';

interface WaitFlags extends GlobalOpts {
  wait?: boolean;
  timeout?: string;
}

/**
 * The directory to send an operator's placement verb to: the leader first, then
 * the others (a follower forwards to the leader). Like the store verbs these go
 * to the servers directly (DirectoryService's admin RPCs are not behind Envoy), so
 * run them where the directory addresses are reachable, with an admin identity
 * (HAYSTACK_TLS_*).
 */
async function directories(opts: GlobalOpts): Promise<Client<typeof DirectoryService>[]> {
  const status = await clientFor(opts).clusterStatus({ timeoutMs: 5000 });
  const dirs = [...status.directories].sort(
    (a, b) => Number(b.directoryId === status.leaderId) - Number(a.directoryId === status.leaderId),
  );
  if (dirs.length === 0) {
    throw Object.assign(new Error('the cluster status names no directory'), { code: 'ENOENT' });
  }
  return dirs.map((d) => createClient(DirectoryService, grpcTransport(d.address)));
}

/** Calls fn on the first directory that answers (UNAVAILABLE moves on to the next). */
async function onDirectory<T>(
  opts: GlobalOpts,
  fn: (dir: Client<typeof DirectoryService>) => Promise<T>,
): Promise<T> {
  let last: unknown;
  for (const dir of await directories(opts)) {
    try {
      return await fn(dir);
    } catch (err) {
      last = err;
      if (ConnectError.from(err).code !== Code.Unavailable) throw err;
    }
  }
  throw last;
}

function describeLoad(l: StorePlacementLoad): string {
  const state = l.drained ? 'drained' : l.draining ? 'draining' : 'in placement';
  return `${l.storeId.padEnd(14)} ${state.padEnd(12)} ${l.memberships} group memberships (${l.leaving} leaving), ${l.extraReplicas} extra replicas, ${l.ecMemberships} EC memberships (${l.shards} shards)`;
}

const loadJson = (l: StorePlacementLoad) => ({
  store: l.storeId,
  memberships: l.memberships,
  leaving: l.leaving,
  extraReplicas: l.extraReplicas,
  draining: l.draining,
  drained: l.drained,
  // Cold tier: groups whose shards of one index it holds, and shards on its disk.
  ecMemberships: l.ecMemberships,
  shards: Number(l.shards),
});

/** `--timeout` in seconds or with a unit (s, m, h). */
function timeoutMs(flags: WaitFlags): number {
  const m = /^(\d+)(s|m|h)?$/.exec(flags.timeout ?? '1h');
  if (!m) {
    throw Object.assign(new Error(`--timeout ${flags.timeout} is not a duration (30s, 10m, 2h)`), {
      code: 'EINVAL',
    });
  }
  return Number(m[1]) * (m[2] === 'h' ? 3_600_000 : m[2] === 'm' ? 60_000 : 1000);
}

/**
 * Polls GetClusterStatus until `done` holds for the store loads, printing each
 * change; exit 1 (DEADLINE_EXCEEDED) after --timeout.
 */
async function waitUntil(
  opts: WaitFlags,
  done: (loads: StorePlacementLoad[]) => boolean,
  show: (loads: StorePlacementLoad[]) => string,
): Promise<StorePlacementLoad[]> {
  const deadline = Date.now() + timeoutMs(opts);
  let shown = '';
  for (;;) {
    const s: GetClusterStatusResponse = await onDirectory(opts, (d) =>
      d.getClusterStatus({}, { timeoutMs: 5000 }),
    );
    const line = show(s.storeLoads);
    if (line !== shown && !opts.json) process.stderr.write(`${line}\n`);
    shown = line;
    if (done(s.storeLoads)) return s.storeLoads;
    if (Date.now() > deadline) {
      process.stderr.write(`haystack: DEADLINE_EXCEEDED: not done after --timeout ${opts.timeout ?? '1h'}\n`);
      process.exit(1);
    }
    await sleep(1000);
  }
}

/** `stores`, `drain STORE`, `undrain STORE`, `balance`: DirectoryService DrainStore / BalancePlacement. */
export function registerPlacementCommands(program: Command): void {
  program
    .command('stores')
    .description(
      'every store: health, free space, placement-group memberships, drain progress (GetClusterStatus)',
    )
    .action(
      action(async (opts) => {
        const s = await clientFor(opts).clusterStatus({ timeoutMs: 5000 });
        const loads = new Map(s.storeLoads.map((l) => [l.storeId, l]));
        for (const r of s.stores) {
          const l = loads.get(r.storeId) ?? create(StorePlacementLoadSchema, { storeId: r.storeId });
          if (opts.json) {
            out(
              JSON.stringify({
                ...loadJson(l),
                address: r.address,
                health: StoreHealth[r.health],
                free: Number(r.freeBytes),
                capacity: Number(r.capacityBytes),
              }),
            );
            continue;
          }
          out(
            `${describeLoad(l)}  ${String(StoreHealth[r.health]).padEnd(9)} ${human(Number(r.freeBytes))} free  ${r.address}`,
          );
        }
      }),
    );

  program
    .command('drain')
    .argument('<store>', 'store id')
    .option('--wait', 'wait until the store is drained (holds nothing the cluster needs)')
    .option('--timeout <duration>', 'with --wait: give up after this long (30s, 10m, 2h)', '1h')
    .description(
      'drain a store before removing it: no new placements; its group memberships and extra replicas move to other stores, each dropped only once its replacement is backfilled',
    )
    .action(
      action(async (opts, storeId: string) => {
        const flags = opts as WaitFlags;
        timeoutMs(flags);
        const r = await onDirectory(opts, (d) => d.drainStore({ storeId }, { timeoutMs: 15_000 }));
        const load = r.load;
        if (!flags.wait || load?.drained) {
          out(opts.json ? JSON.stringify(load ? loadJson(load) : { store: storeId }) : describeLoad(load!));
          return;
        }
        const loads = await waitUntil(
          flags,
          (ls) => ls.find((l) => l.storeId === storeId)?.drained ?? false,
          (ls) => {
            const l = ls.find((x) => x.storeId === storeId);
            return l ? describeLoad(l) : `${storeId} is no longer registered`;
          },
        );
        const l = loads.find((x) => x.storeId === storeId)!;
        out(opts.json ? JSON.stringify(loadJson(l)) : `${describeLoad(l)}: it may be stopped`);
      }),
    );

  program
    .command('undrain')
    .argument('<store>', 'store id')
    .description('take a draining store back into placement (moves already started finish)')
    .action(
      action(async (opts, storeId: string) => {
        const r = await onDirectory(opts, (d) =>
          d.drainStore({ storeId, undrain: true }, { timeoutMs: 15_000 }),
        );
        out(opts.json ? JSON.stringify(loadJson(r.load!)) : describeLoad(r.load!));
      }),
    );

  program
    .command('balance')
    .option('--dry-run', 'print the moves without starting them')
    .option('--max-moves <n>', 'at most this many moves (1..1024)', '16')
    .option('--wait', 'wait until every move is done (replacements backfilled, leaving members removed)')
    .option('--timeout <duration>', 'with --wait: give up after this long (30s, 10m, 2h)', '1h')
    .description(
      'move placement-group memberships from the stores with the most to those with the fewest (a new empty store), each dropped only once its replacement is backfilled',
    )
    .action(
      action(async (opts) => {
        const flags = opts as WaitFlags & { dryRun?: boolean; maxMoves?: string };
        const maxMoves = Number(flags.maxMoves);
        if (!Number.isInteger(maxMoves) || maxMoves < 1 || maxMoves > 1024) {
          throw Object.assign(new Error(`--max-moves ${flags.maxMoves} is not a number in 1..1024`), {
            code: 'EINVAL',
          });
        }
        timeoutMs(flags);
        const r = await onDirectory(opts, (d) =>
          d.balancePlacement({ dryRun: !!flags.dryRun, maxMoves }, { timeoutMs: 15_000 }),
        );
        if (opts.json) {
          out(
            JSON.stringify({
              dryRun: !!flags.dryRun,
              moves: r.moves.map((m) => ({ group: m.group, from: m.fromStoreId, to: m.toStoreId })),
              before: Object.fromEntries(r.before.map((l) => [l.storeId, l.memberships])),
              after: Object.fromEntries(r.after.map((l) => [l.storeId, l.memberships])),
              inProgress: r.inProgress,
            }),
          );
        } else {
          const verb = flags.dryRun ? 'would move' : 'moving';
          if (r.moves.length === 0) out('balanced: no move needed (memberships differ by at most one)');
          for (const m of r.moves) out(`${verb} group ${m.group}: ${m.fromStoreId} -> ${m.toStoreId}`);
          const after = new Map(r.after.map((l) => [l.storeId, l.memberships]));
          for (const l of r.before) {
            out(
              `  ${l.storeId.padEnd(14)} ${l.memberships} -> ${after.get(l.storeId) ?? l.memberships} memberships`,
            );
          }
          if (r.inProgress > 0) out(`${r.inProgress} earlier moves still under way`);
        }
        if (!flags.wait || flags.dryRun) return;
        await waitUntil(
          flags,
          (ls) => ls.every((l) => l.leaving === 0),
          (ls) => `${ls.reduce((n, l) => n + l.leaving, 0)} moves under way`,
        );
        if (!opts.json) out('balance done: every replacement is ACTIVE');
      }),
    );
}
