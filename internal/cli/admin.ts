import { createClient } from '@connectrpc/connect';
import type { Command } from 'commander';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { grpcTransport } from '../sdk/index.js';
import { action, clientFor, type GlobalOpts, human, out } from './client.js';

export interface StoreFlags extends GlobalOpts {
  store?: string;
  volume?: string;
  force?: boolean;
}

/**
 * The stores to act on: every store the directory knows (its registered address), or the one
 * named by --store. Admin verbs talk to stores directly (StoreService is not behind Envoy), so
 * run them where the store addresses are reachable (the dev machine, a pod in the cluster).
 */
export async function targets(opts: StoreFlags): Promise<{ id: string; address: string }[]> {
  const status = await clientFor(opts).clusterStatus({ timeoutMs: 5000 });
  const all = status.stores.map((s) => ({ id: s.storeId, address: s.address }));
  if (!opts.store) return all;
  const one = all.filter((s) => s.id === opts.store || s.address === opts.store);
  if (one.length === 0) {
    throw Object.assign(
      new Error(`no store ${opts.store}; known: ${all.map((s) => s.id).join(', ') || 'none'}`),
      { code: 'ENOENT' },
    );
  }
  return one;
}

function volumeId(opts: StoreFlags): number {
  const v = Number(opts.volume ?? '0');
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw Object.assign(new Error(`--volume ${opts.volume} is not a volume id`), { code: 'EINVAL' });
  }
  return v;
}

export const store = (address: string) => createClient(StoreService, grpcTransport(address));

/** `volumes`, `compact`, `scrub`: StoreService GetStats / Compact / Scrub on every store (or --store). */
export function registerAdminCommands(program: Command): void {
  program
    .command('volumes')
    .option('--store <id>', 'only this store (id or host:port)')
    .description('volumes of every store (StoreService GetStats): size, live bytes, needles, efficiency')
    .action(
      action(async (opts) => {
        for (const t of await targets(opts as StoreFlags)) {
          const s = await store(t.address).getStats({}, { timeoutMs: 10_000 });
          if (opts.json) {
            out(
              JSON.stringify({
                store: s.storeId,
                address: t.address,
                capacity: Number(s.capacityBytes),
                free: Number(s.freeBytes),
                used: Number(s.usedBytes),
                volumes: s.volumes.map((v) => ({
                  id: v.volumeId,
                  size: Number(v.sizeBytes),
                  live: Number(v.liveBytes),
                  needles: Number(v.needleCount),
                  deleted: Number(v.deletedCount),
                  efficiency: v.efficiency,
                  readOnly: v.readOnly,
                  compacting: v.compacting,
                })),
              }),
            );
            continue;
          }
          out(
            `${s.storeId.padEnd(14)} ${t.address.padEnd(22)} ${s.volumes.length} volumes, ${human(Number(s.usedBytes))} used, ${human(Number(s.freeBytes))} free`,
          );
          for (const v of s.volumes) {
            const flags = [v.readOnly ? 'read-only' : '', v.compacting ? 'compacting' : ''].filter(Boolean);
            out(
              `  volume ${String(v.volumeId).padEnd(5)} ${human(Number(v.sizeBytes)).padStart(10)}  live ${human(Number(v.liveBytes)).padStart(10)}  ${v.needleCount} needles, ${v.deletedCount} deleted, efficiency ${v.efficiency.toFixed(2)}${flags.length ? `  ${flags.join(' ')}` : ''}`,
            );
          }
        }
      }),
    );

  program
    .command('compact')
    .option('--store <id>', 'only this store (id or host:port)')
    .option('--volume <n>', 'only this volume (default: every volume below the efficiency threshold)')
    .option('--force', 'compact even above COMPACTION_EFFICIENCY_THRESHOLD')
    .description('compact volumes now (StoreService Compact); reads and writes continue')
    .action(
      action(async (opts) => {
        const flags = opts as StoreFlags;
        const volume = volumeId(flags);
        for (const t of await targets(flags)) {
          const r = await store(t.address).compact({ volumeId: volume, force: !!flags.force });
          if (opts.json) {
            out(
              JSON.stringify({
                store: t.id,
                compactions: r.compactions.map((c) => ({
                  volume: c.volumeId,
                  before: Number(c.bytesBefore),
                  after: Number(c.bytesAfter),
                  needlesKept: Number(c.needlesKept),
                  ms: Number(c.durationMs),
                })),
              }),
            );
            continue;
          }
          if (r.compactions.length === 0) out(`${t.id.padEnd(14)} nothing to compact`);
          for (const c of r.compactions) {
            out(
              `${t.id.padEnd(14)} volume ${c.volumeId}: ${human(Number(c.bytesBefore))} -> ${human(Number(c.bytesAfter))}, ${c.needlesKept} needles kept, ${c.durationMs} ms`,
            );
          }
        }
      }),
    );

  program
    .command('scrub')
    .option('--store <id>', 'only this store (id or host:port)')
    .option('--volume <n>', 'only this volume (default: all)')
    .description(
      'verify every needle checksum now (StoreService Scrub); corrupt replicas go to the replication manager for repair; exit 1 when any',
    )
    .action(
      action(async (opts) => {
        const flags = opts as StoreFlags;
        const volume = volumeId(flags);
        let corrupt = 0;
        for (const t of await targets(flags)) {
          const r = await store(t.address).scrub({ volumeId: volume });
          const current = r.corrupt.filter((c) => !c.superseded);
          corrupt += current.length;
          if (opts.json) {
            out(
              JSON.stringify({
                store: t.id,
                needlesChecked: Number(r.needlesChecked),
                bytesChecked: Number(r.bytesChecked),
                corrupt: r.corrupt.map((c) => ({
                  blobId: c.blobId,
                  volume: c.volumeId,
                  offset: Number(c.offset),
                  reason: c.reason,
                  superseded: c.superseded,
                })),
              }),
            );
            continue;
          }
          out(
            `${t.id.padEnd(14)} ${r.needlesChecked} needles, ${human(Number(r.bytesChecked))} checked, ${current.length} corrupt`,
          );
          for (const c of r.corrupt) {
            out(`  ${c.blobId || '(unreadable header)'} volume ${c.volumeId} @${c.offset}: ${c.reason}`);
          }
        }
        if (corrupt > 0) {
          process.stderr.write(
            `haystack: DATA_LOSS: ${corrupt} corrupt replicas (reported to the replication manager for repair)\n`,
          );
          process.exit(1);
        }
      }),
    );
}
