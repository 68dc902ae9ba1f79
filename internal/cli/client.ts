import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createClient } from '@connectrpc/connect';
import { Presets, SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { Health, HealthCheckResponse_ServingStatus } from '../../gen/grpc/health/v1/health_pb.js';
import { StorageTier } from '../../gen/haystack/v1/blob_pb.js';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import { DirectoryRole } from '../../gen/haystack/v1/directory_pb.js';
import { ReplicationService, TaskPriority } from '../../gen/haystack/v1/replication_pb.js';
import { formatBytes } from '../common/format-bytes.js';
import { type ClusterVerdict, clusterVerdict, verdictText } from '../sdk/cluster-verdict.js';
import {
  DEFAULT_URL,
  grpcTransport,
  HaystackClient,
  type StoredBlob,
  toHaystackError,
} from '../sdk/index.js';

export interface GlobalOpts {
  json?: boolean;
  url?: string;
  progress?: boolean;
}

export const endpoint = (o: GlobalOpts) => o.url ?? process.env.HAYSTACK_URL ?? DEFAULT_URL;
export const clientFor = (o: GlobalOpts) => new HaystackClient({ url: endpoint(o) });
export const out = (line: string) => process.stdout.write(`${line}\n`);

function blobJson(b: StoredBlob) {
  return { ...b, createdAt: b.createdAt.toISOString() };
}

/** Bytes in binary units (shared with the dashboard). */
export const human = formatBytes;

/** A byte progress bar on stderr: on a terminal, or everywhere with --progress; never with --json. */
function progressBar(opts: GlobalOpts, label: string): SingleBar | undefined {
  if (opts.json || !(opts.progress || process.stderr.isTTY)) return undefined;
  return new SingleBar(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {percentage}% | {done} / {all}`,
      noTTYOutput: true,
      notTTYSchedule: 500,
      hideCursor: true,
      clearOnComplete: false,
      formatValue: (v, _o, type) => (type === 'value' || type === 'total' ? human(v) : String(v)),
    },
    Presets.shades_classic,
  );
}

/** Runs a client command: a one-line error on stderr (and JSON on stdout with --json), exit 1. */
export function action<A extends unknown[]>(fn: (opts: GlobalOpts, ...args: A) => Promise<void>) {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const opts = cmd.optsWithGlobals<GlobalOpts>();
    try {
      await fn(opts, ...(args.slice(0, -2) as A));
    } catch (err) {
      // Local problems (a missing file) carry a string errno code; the rest are RPC failures.
      const local = err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string';
      const codeName = local ? 'LOCAL' : toHaystackError(err).codeName;
      const message = (local ? (err as Error).message : toHaystackError(err).message)
        .replace(/\s+/g, ' ')
        .trim();
      if (opts.json) out(JSON.stringify({ error: { code: codeName, message } }));
      process.stderr.write(`haystack: ${codeName}: ${message}\n`);
      process.exit(1);
    }
  };
}

/** `-` (stdin) spooled to a temporary file, so it uploads like a file (size and SHA-256 known). */
async function spoolStdin(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'haystack-stdin-'));
  const file = path.join(dir, 'stdin');
  await pipeline(process.stdin, createWriteStream(file));
  return file;
}

async function filesOf(inputs: string[]): Promise<string[]> {
  const files: string[] = [];
  for (const p of inputs) {
    if (p === '-') {
      files.push(p);
      continue;
    }
    const s = await stat(p);
    if (s.isDirectory()) {
      const entries = (await readdir(p, { withFileTypes: true })).filter((e) => !e.name.startsWith('.'));
      entries.sort((a, b) => a.name.localeCompare(b.name));
      files.push(...(await filesOf(entries.map((e) => path.join(p, e.name)))));
    } else if (s.isFile()) {
      files.push(p);
    }
  }
  return files;
}

export function registerClientCommands(program: Command): void {
  program
    .option('--url <url>', `Envoy or a gateway (env HAYSTACK_URL, default ${DEFAULT_URL})`)
    .option('--json', 'machine-readable output: one JSON object per line')
    .option('--progress', 'show progress bars even when stderr is not a terminal');

  program
    .command('upload')
    .argument('<paths...>', 'files or directories (recursively); - reads stdin')
    .option('--replicas <n>', 'replicas wanted (default: the cluster default)', '0')
    .option('--id <id>', 'blob id (one file only; default: the SHA-256 of the content)')
    .option(
      '--content-type <type>',
      'MIME type (default: from the file extension; stdin: application/octet-stream)',
    )
    .description('upload files; prints "id  path" per file (--json: one object per file)')
    .action(
      action(async (opts, paths: string[]) => {
        const flags = opts as GlobalOpts & { replicas: string; id?: string; contentType?: string };
        const client = clientFor(opts);
        const files = await filesOf(paths);
        if (files.length === 0) throw Object.assign(new Error('no files to upload'), { code: 'ENOENT' });
        if (flags.id && files.length > 1) {
          throw Object.assign(new Error('--id needs exactly one file'), { code: 'EINVAL' });
        }
        for (const file of files) {
          const stdin = file === '-';
          const source = stdin ? await spoolStdin() : file;
          const bar = progressBar(opts, stdin ? 'stdin' : path.basename(file));
          const size = (await stat(source)).size;
          bar?.start(size, 0, { done: human(0), all: human(size) });
          try {
            const blob = await client.uploadFile(source, {
              replicaCount: Number(flags.replicas) || 0,
              ...(flags.id ? { id: flags.id } : {}),
              ...(stdin ? { fileName: '', contentType: 'application/octet-stream' } : {}),
              ...(flags.contentType ? { contentType: flags.contentType } : {}),
              onProgress: (sent, total) => bar?.update(sent, { done: human(sent), all: human(total) }),
            });
            bar?.update(size, { done: human(size), all: human(size) });
            bar?.stop();
            out(opts.json ? JSON.stringify({ file, ...blobJson(blob) }) : `${blob.id}  ${file}`);
          } catch (err) {
            bar?.stop();
            throw err;
          } finally {
            if (stdin) await rm(path.dirname(source), { recursive: true, force: true });
          }
        }
      }),
    );

  program
    .command('download')
    .argument('<id>', 'blob id')
    .argument('[out]', 'output file; - or none: stdout')
    .description('download a blob (its SHA-256 is verified)')
    .action(
      action(async (opts, id: string, file?: string) => {
        const client = clientFor(opts);
        if (file && file !== '-') {
          const bar = progressBar(opts, id.slice(0, 16));
          let started = false;
          const info = await client.downloadToFile(id, file, {
            onProgress: (got, total) => {
              if (!started) bar?.start(total, 0, { done: human(0), all: human(total) });
              started = true;
              bar?.update(got, { done: human(got), all: human(total) });
            },
          });
          bar?.stop();
          if (opts.json) out(JSON.stringify({ file, ...blobJson(info) }));
          return;
        }
        // Verified before a byte reaches stdout: spooled to a private temporary file
        // (SHA-256 checked by downloadToFile), then copied; a bad download prints nothing
        // and exits non-zero.
        const dir = await mkdtemp(path.join(tmpdir(), 'haystack-dl-'));
        try {
          const spool = path.join(dir, 'blob');
          await client.downloadToFile(id, spool);
          await pipeline(createReadStream(spool), process.stdout, { end: false });
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      }),
    );

  program
    .command('delete')
    .argument('<ids...>', 'blob ids')
    .description('delete blobs')
    .action(
      action(async (opts, ids: string[]) => {
        const client = clientFor(opts);
        for (const id of ids) {
          const found = await client.delete(id);
          out(opts.json ? JSON.stringify({ id, found }) : `${found ? 'deleted' : 'not found'} ${id}`);
        }
      }),
    );

  program
    .command('status')
    .argument('<id>', 'blob id')
    .description('metadata, replicas and access heat of a blob')
    .action(
      action(async (opts, id: string) => {
        const client = clientFor(opts);
        const blob = await client.stat(id);
        // Heat and replica placement come from the replication manager, when reachable.
        const rep = await createClient(ReplicationService, grpcTransport(endpoint(opts)))
          .getBlobStatus(
            { blobId: id },
            {
              timeoutMs: 3000,
              // Through Envoy this is an admin read (docs/security.md, "Public access").
              ...(process.env.HAYSTACK_TOKEN
                ? { headers: { authorization: `Bearer ${process.env.HAYSTACK_TOKEN}` } }
                : {}),
            },
          )
          .catch(() => undefined);
        const placement = rep && {
          ratePerMinute: rep.ratePerMinute,
          replicas: rep.replicas.map((r) => ({
            store: r.storeId,
            address: r.address,
            volume: r.volumeId,
            health: StoreHealth[r.health],
          })),
          tasks: rep.tasks.length,
          tier: rep.tier === StorageTier.ERASURE_CODED ? 'erasure-coded' : 'replicated',
          ...(rep.cold?.layout
            ? {
                code: `RS(${rep.cold.layout.dataShards},${rep.cold.layout.parityShards})`,
                stripe: rep.cold.stripeId,
              }
            : {}),
          shards: rep.shards.map((r, index) => ({
            index,
            store: r.storeId,
            address: r.address,
            health: StoreHealth[r.health],
          })),
        };
        if (opts.json) {
          out(JSON.stringify({ ...blobJson(blob), ...(placement ? { replication: placement } : {}) }));
          return;
        }
        out(`id             ${blob.id}`);
        out(`size           ${blob.size} (${human(blob.size)})`);
        out(`sha256         ${blob.sha256}`);
        out(`content type   ${blob.contentType}`);
        out(`created        ${blob.createdAt.toISOString()}`);
        out(`replicas       ${blob.replicas} (target ${blob.targetReplicas})`);
        if (placement) {
          out(
            `tier           ${placement.tier}${placement.code ? ` ${placement.code}, stripe ${placement.stripe}` : ''}`,
          );
          out(`reads/min      ${placement.ratePerMinute.toFixed(1)}`);
          for (const r of placement.replicas)
            out(`  ${r.store.padEnd(14)} ${r.address.padEnd(22)} volume ${r.volume} ${r.health}`);
          for (const r of placement.shards)
            out(
              `  shard ${String(r.index).padEnd(3)} ${r.store.padEnd(14)} ${r.address.padEnd(22)} ${r.health}`,
            );
        }
      }),
    );

  program
    .command('ls')
    .option('--prefix <prefix>', 'only ids with this prefix', '')
    .option('--limit <n>', 'at most this many', '1000')
    .description('list blobs in id order')
    .action(
      action(async (opts) => {
        const flags = opts as GlobalOpts & { prefix: string; limit: string };
        const limit = Number(flags.limit);
        let n = 0;
        for await (const b of clientFor(opts).listAll({
          prefix: flags.prefix,
          pageSize: Math.min(limit, 1000),
        })) {
          if (n++ >= limit) break;
          out(
            opts.json
              ? JSON.stringify(blobJson(b))
              : `${b.id}\t${b.size}\t${b.contentType}\t${b.createdAt.toISOString()}`,
          );
        }
      }),
    );

  program
    .command('health')
    .argument(
      '[addresses...]',
      'host:port of servers to check (default: the endpoint and every cluster member)',
    )
    .description(
      'grpc.health.v1 status of servers; without addresses also the cluster: up, degraded (a store DOWN, ' +
        'blobs below target, no directory leader) or unreachable. Exit 1 when a server is not serving or no directory answers',
    )
    .action(
      action(async (opts, addresses: string[]) => {
        const targets = addresses.length > 0 ? addresses : [endpoint(opts)];
        let verdict: ClusterVerdict | undefined;
        if (addresses.length === 0) {
          // Every directory and store the cluster knows of, and the cluster's own state.
          const client = clientFor(opts);
          const [status, replication] = await Promise.all([
            client.clusterStatus({ timeoutMs: 3000 }).catch(() => undefined),
            client.replicationStats({ timeoutMs: 3000 }).catch(() => undefined),
          ]);
          for (const d of status?.directories ?? []) targets.push(d.address);
          for (const s of status?.stores ?? []) targets.push(s.address);
          verdict = clusterVerdict(status, replication);
        }
        let bad = 0;
        for (const target of [...new Set(targets)]) {
          let status: string;
          try {
            const res = await createClient(Health, grpcTransport(target)).check({}, { timeoutMs: 3000 });
            status = HealthCheckResponse_ServingStatus[res.status] ?? 'UNKNOWN';
          } catch (err) {
            status = `UNREACHABLE (${toHaystackError(err).message.replace(/\s+/g, ' ')})`;
          }
          if (status !== 'SERVING') bad++;
          out(opts.json ? JSON.stringify({ target, status }) : `${target.padEnd(28)} ${status}`);
        }
        if (verdict) {
          out(
            opts.json
              ? JSON.stringify({ cluster: verdict.state, problems: verdict.problems })
              : verdictText(verdict),
          );
        }
        if (bad > 0) {
          process.stderr.write(`haystack: UNAVAILABLE: ${bad} of ${targets.length} not serving\n`);
          process.exit(1);
        }
        // Degraded with every server serving is a state to show, not a failed check: blobs
        // below target right after a heat-raised target are routine and repair is on its way.
        if (verdict?.state === 'unreachable') {
          process.stderr.write('haystack: UNAVAILABLE: no directory answered the cluster status\n');
          process.exit(1);
        }
      }),
    );

  program
    .command('stats')
    .description('cluster statistics: directories, stores, replication, cache')
    .action(
      action(async (opts) => {
        const client = clientFor(opts);
        const [cluster, replication, gateway] = await Promise.allSettled([
          client.clusterStatus({ timeoutMs: 5000 }),
          client.replicationStats({ timeoutMs: 5000 }),
          client.gatewayStats({ timeoutMs: 5000 }),
        ]);
        if (
          cluster.status === 'rejected' &&
          replication.status === 'rejected' &&
          gateway.status === 'rejected'
        ) {
          throw cluster.reason;
        }
        const c = cluster.status === 'fulfilled' ? cluster.value : undefined;
        const r = replication.status === 'fulfilled' ? replication.value : undefined;
        const g = gateway.status === 'fulfilled' ? gateway.value : undefined;
        const doc = {
          directories: c?.directories.map((d) => ({
            id: d.directoryId,
            address: d.address,
            role: DirectoryRole[d.role],
            term: Number(d.term),
            commitIndex: Number(d.commitIndex),
            reachable: d.reachable,
          })),
          leader: c?.leaderId,
          term: c ? Number(c.term) : undefined,
          blobs: c ? Number(c.blobCount) : undefined,
          replicaHistogram: c?.replicaHistogram.map((b) => ({
            replicas: b.replicas,
            blobs: Number(b.blobs),
          })),
          stores: c?.stores.map((s) => {
            const l = c.storeLoads.find((x) => x.storeId === s.storeId);
            return {
              id: s.storeId,
              address: s.address,
              health: StoreHealth[s.health],
              capacity: Number(s.capacityBytes),
              free: Number(s.freeBytes),
              volumes: s.volumes.length,
              lastHeartbeatMs: Number(s.lastHeartbeatMs),
              // Placement share and drain progress (`haystack drain`, `haystack balance`).
              memberships: l?.memberships,
              leaving: l?.leaving,
              ecMemberships: l?.ecMemberships,
              shards: Number(s.shards?.count ?? 0n),
              shardBytes: Number(s.shards?.bytes ?? 0n),
              draining: s.draining,
              drained: l?.drained ?? false,
            };
          }),
          // Bytes per tier and the effective replication factor (stored / logical). The
          // replica factor is measured from the stores' bytes per placement group
          // (extra replicas of hot blobs raise it), or estimated as the group size.
          tiers: c?.tierBytes && {
            replicaBytes: Number(c.tierBytes.replicaBytes),
            replicaExtraBytes: Number(c.tierBytes.replicaExtraBytes),
            replicaMeasured: c.tierBytes.replicaMeasured,
            replicaLogicalBytes: Number(c.tierBytes.replicaLogicalBytes),
            shardBytes: Number(c.tierBytes.shardBytes),
            shardLogicalBytes: Number(c.tierBytes.shardLogicalBytes),
            replicaReplication: c.tierBytes.replicaReplication,
            shardReplication: c.tierBytes.shardReplication,
            effectiveReplication: c.tierBytes.effectiveReplication,
          },
          replication: r && {
            manager: r.managerId,
            active: r.active,
            queue: r.queue.map((q) => ({ priority: TaskPriority[q.priority], depth: Number(q.depth) })),
            inFlight: Number(r.inFlight),
            completed: Number(r.completed),
            failed: Number(r.failed),
            hotBlobs: r.hotBlobs.map((h) => ({
              id: h.blobId,
              ratePerMinute: h.ratePerMinute,
              replicas: h.replicaCount,
            })),
          },
          cache: g && {
            backend: g.cacheBackend,
            available: g.cacheAvailable,
            hits: g.cluster.hits,
            misses: g.cluster.misses,
            hitRate: g.cluster.hitRate,
            gateway: g.gatewayId,
          },
          errors: [cluster, replication, gateway]
            .filter((x): x is PromiseRejectedResult => x.status === 'rejected')
            .map((x) => toHaystackError(x.reason).message),
        };
        if (opts.json) {
          out(JSON.stringify(doc));
          return;
        }
        if (doc.directories) {
          out(`directories (leader ${doc.leader || 'none'}, term ${doc.term}, ${doc.blobs} blobs)`);
          for (const d of doc.directories) {
            out(
              `  ${d.id.padEnd(14)} ${d.address.padEnd(22)} ${String(d.role).padEnd(10)} term ${d.term}${d.reachable ? '' : ' UNREACHABLE'}`,
            );
          }
        }
        if (doc.stores) {
          out('stores');
          for (const s of doc.stores) {
            const groups = s.memberships === undefined ? '' : `, ${s.memberships} groups`;
            const drain = s.drained
              ? ', DRAINED (may be stopped)'
              : s.draining
                ? `, DRAINING (${s.memberships ?? 0} groups left, ${s.leaving ?? 0} moving, ${s.ecMemberships ?? 0} EC memberships, ${s.shards} shards left)`
                : '';
            const shards = s.shards > 0 ? `, ${s.shards} shards (${human(s.shardBytes)})` : '';
            out(
              `  ${s.id.padEnd(14)} ${s.address.padEnd(22)} ${String(s.health).padEnd(10)} ${human(s.free)} free of ${human(s.capacity)}${drain || groups + shards}`,
            );
          }
        }
        if (doc.tiers) {
          const t = doc.tiers;
          const x = (f: number) => (f > 0 ? `${f.toFixed(2)}×` : '-');
          out(
            `tiers          replicas ${human(t.replicaBytes)} (${x(t.replicaReplication)}${t.replicaMeasured ? `, ${human(t.replicaExtraBytes)} extra` : ', estimated'}), shards ${human(t.shardBytes)} (${x(t.shardReplication)}), effective replication ${x(t.effectiveReplication)}`,
          );
        }
        if (doc.replication) {
          const q = doc.replication.queue.reduce((n, x) => n + x.depth, 0);
          out(
            `replication    queue ${q}, in flight ${doc.replication.inFlight}, done ${doc.replication.completed}, failed ${doc.replication.failed}`,
          );
          for (const h of doc.replication.hotBlobs.slice(0, 5))
            out(`  hot ${h.id} ${h.ratePerMinute.toFixed(1)}/min ${h.replicas} replicas`);
        }
        if (doc.cache) {
          out(
            `cache          ${doc.cache.backend}${doc.cache.available ? '' : ' (unavailable)'}: ${doc.cache.hits} hits, ${doc.cache.misses} misses, hit rate ${(doc.cache.hitRate * 100).toFixed(1)}%`,
          );
        }
        for (const e of doc.errors) process.stderr.write(`haystack: warning: ${e}\n`);
      }),
    );
}
