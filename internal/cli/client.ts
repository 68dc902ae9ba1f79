import { createReadStream, createWriteStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, createClient, type Transport } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import { SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { Health, HealthCheckResponse_ServingStatus } from '../../gen/grpc/health/v1/health_pb.js';
import {
  type BlobInfo,
  BlobService,
  type UploadRequest,
  UploadRequestSchema,
} from '../../gen/haystack/v1/blob_pb.js';

const DEFAULT_URL = 'http://127.0.0.1:8080';
const CHUNK = 256 * 1024;

interface GlobalOpts {
  json?: boolean;
  url?: string;
}

function transportFor(opts: GlobalOpts): Transport {
  const baseUrl = opts.url ?? process.env.HAYSTACK_URL ?? DEFAULT_URL;
  return createGrpcTransport({ baseUrl: baseUrl.includes('://') ? baseUrl : `http://${baseUrl}` });
}

function info(b: BlobInfo | undefined) {
  if (!b) return {};
  return {
    id: b.blobId,
    size: Number(b.size),
    sha256: b.sha256,
    contentType: b.contentType,
    createdAt: new Date(Number(b.createdAtMs)).toISOString(),
    replicas: b.replicaCount,
    targetReplicas: b.targetReplicaCount,
  };
}

/** Runs a client command: one-line error and exit 1 on failure. */
function action<A extends unknown[]>(fn: (opts: GlobalOpts, ...args: A) => Promise<void>) {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const opts = cmd.optsWithGlobals<GlobalOpts>();
    try {
      await fn(opts, ...(args.slice(0, -2) as A));
    } catch (err) {
      const ce = ConnectError.from(err);
      const msg = `${Code[ce.code] ?? 'ERROR'}: ${ce.rawMessage}`;
      if (opts.json)
        process.stdout.write(
          `${JSON.stringify({ error: { code: Code[ce.code], message: ce.rawMessage } })}\n`,
        );
      process.stderr.write(`haystack: ${msg}\n`);
      process.exit(1);
    }
  };
}

async function filesOf(inputs: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const p of inputs) {
    const s = await stat(p);
    if (s.isDirectory()) {
      const entries = await readdir(p, { withFileTypes: true });
      out.push(...(await filesOf(entries.map((e) => path.join(p, e.name)))));
    } else {
      out.push(p);
    }
  }
  return out;
}

const MIME: Record<string, string> = {
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.png': 'image/png',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.svg': 'image/svg+xml',
  '.txt': 'text/plain',
  '.json': 'application/json',
};

export function registerClientCommands(program: Command): void {
  program
    .option('--url <url>', `Haystack endpoint (env HAYSTACK_URL, default ${DEFAULT_URL})`)
    .option('--json', 'print machine-readable JSON');

  program
    .command('upload')
    .argument('<paths...>', 'files or directories')
    .description('upload files; prints one blob id per line')
    .action(
      action(async (opts, paths: string[]) => {
        const client = createClient(BlobService, transportFor(opts));
        for (const file of await filesOf(paths)) {
          const size = (await stat(file)).size;
          const bar =
            opts.json || !process.stderr.isTTY ? undefined : new SingleBar({ stream: process.stderr });
          bar?.start(size, 0);
          let sent = 0;
          async function* messages(): AsyncGenerator<UploadRequest> {
            yield create(UploadRequestSchema, {
              msg: {
                case: 'header',
                value: {
                  size: BigInt(size),
                  contentType: MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream',
                },
              },
            });
            for await (const chunk of createReadStream(file, { highWaterMark: CHUNK })) {
              sent += (chunk as Buffer).length;
              bar?.update(sent);
              yield create(UploadRequestSchema, { msg: { case: 'chunk', value: chunk as Buffer } });
            }
          }
          const res = await client.upload(messages()).finally(() => bar?.stop());
          if (opts.json) process.stdout.write(`${JSON.stringify({ file, ...info(res.blob) })}\n`);
          else process.stdout.write(`${res.blob?.blobId}\n`);
        }
      }),
    );

  program
    .command('download')
    .argument('<id>', 'blob id')
    .argument('[out]', 'output file (default: stdout)')
    .description('download a blob')
    .action(
      action(async (opts, id: string, out?: string) => {
        const client = createClient(BlobService, transportFor(opts));
        const sink: NodeJS.WritableStream = out ? createWriteStream(out) : process.stdout;
        let blob: BlobInfo | undefined;
        for await (const msg of client.download({ blobId: id })) {
          if (msg.msg.case === 'info') blob = msg.msg.value;
          else if (msg.msg.case === 'chunk' && !sink.write(msg.msg.value)) {
            await new Promise<void>((r) => sink.once('drain', () => r()));
          }
        }
        if (out) await new Promise<void>((r) => sink.end(() => r()));
        if (opts.json) process.stderr.write(`${JSON.stringify(info(blob))}\n`);
      }),
    );

  program
    .command('delete')
    .argument('<id>', 'blob id')
    .description('delete a blob')
    .action(
      action(async (opts, id: string) => {
        const res = await createClient(BlobService, transportFor(opts)).delete({ blobId: id });
        process.stdout.write(
          opts.json
            ? `${JSON.stringify({ id, found: res.found })}\n`
            : `${res.found ? 'deleted' : 'not found'} ${id}\n`,
        );
      }),
    );

  program
    .command('status')
    .argument('<id>', 'blob id')
    .description('metadata and replicas of a blob')
    .action(
      action(async (opts, id: string) => {
        const res = await createClient(BlobService, transportFor(opts)).stat({ blobId: id });
        process.stdout.write(`${JSON.stringify(info(res.blob), null, opts.json ? undefined : 2)}\n`);
      }),
    );

  program
    .command('ls')
    .option('--prefix <prefix>', 'only ids with this prefix', '')
    .option('--limit <n>', 'at most this many', '1000')
    .description('list blobs')
    .action(
      action(async (opts) => {
        const flags = opts as GlobalOpts & { prefix: string; limit: string };
        const client = createClient(BlobService, transportFor(opts));
        let token = '';
        let left = Number(flags.limit);
        do {
          const res = await client.list({
            prefix: flags.prefix,
            pageToken: token,
            pageSize: Math.min(left, 1000),
          });
          for (const b of res.blobs) {
            process.stdout.write(
              opts.json ? `${JSON.stringify(info(b))}\n` : `${b.blobId}\t${b.size}\t${b.contentType}\n`,
            );
          }
          left -= res.blobs.length;
          token = res.nextPageToken;
        } while (token && left > 0);
      }),
    );

  program
    .command('health')
    .argument('[addresses...]', 'host:port of servers to check (default: the endpoint)')
    .description('grpc.health.v1 status of servers')
    .action(
      action(async (opts, addresses: string[]) => {
        const targets =
          addresses.length > 0 ? addresses : [opts.url ?? process.env.HAYSTACK_URL ?? DEFAULT_URL];
        let bad = 0;
        for (const target of targets) {
          let status = 'UNREACHABLE';
          try {
            const res = await createClient(Health, transportFor({ url: target })).check(
              {},
              { timeoutMs: 3000 },
            );
            status = HealthCheckResponse_ServingStatus[res.status] ?? 'UNKNOWN';
          } catch (err) {
            status = `UNREACHABLE (${ConnectError.from(err).rawMessage})`;
          }
          if (!status.startsWith('SERVING')) bad++;
          process.stdout.write(
            opts.json ? `${JSON.stringify({ target, status })}\n` : `${target}\t${status}\n`,
          );
        }
        if (bad > 0) process.exit(1);
      }),
    );

  program
    .command('stats')
    .description('cluster statistics')
    .action(
      action(async () => {
        throw new ConnectError(
          'cluster statistics arrive with the directory and replication services',
          Code.Unimplemented,
        );
      }),
    );
}
