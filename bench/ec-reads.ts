// The read side of bench:ec: latency of reading a blob from six real store
// processes (RS(4,2), one stripe per blob, shards spread over all six) against a
// plain replica read of the same bytes from one store, and of a degraded read
// when two data shards' stores are gone (decoding from parity). Sequential reads
// (concurrency 1), so the figures are per-read latency, not throughput.
import { rmSync } from 'node:fs';
import { createClient } from '@connectrpc/connect';
import { StoreService } from '../gen/haystack/v1/store_pb.js';
import { spawnServer } from '../internal/cli/processes.js';
import { encodeBlob, type ShardLayout } from '../internal/ec/codec.js';
import { putStripe, readStripe, type StoreClient } from '../internal/ec/shard-client.js';
import { createDirectGrpcTransport } from '../internal/rpc/direct-transport.js';
import { bytes } from '../test/helpers/store-client.js';
import { type PhaseResult, runPhase } from './stats.js';

const STORES = 6;
const CODE = { k: 4, m: 2 };
const BLOBS = 16;

/** Phases per blob size: replica read, systematic stripe read, degraded stripe read (2 data shards down). */
export async function measureReads(sizes: number[], durationMs: number): Promise<PhaseResult[]> {
  const dirs = Array.from({ length: STORES }, (_, i) => `/tmp/haystack-ec-bench-${process.pid}-${i}`);
  const procs = await Promise.all(
    dirs.map((dir, i) =>
      spawnServer({
        name: `ec-bench-${i}`,
        args: ['store', '--listen', '127.0.0.1:0', '--data', dir],
        env: { STORE_ID: `ec-bench-${i}`, MAX_VOLUME_SIZE: '256MiB' },
      }),
    ),
  );
  try {
    const clients: StoreClient[] = procs.map((p) =>
      createClient(StoreService, createDirectGrpcTransport({ address: p.address })),
    );
    const results: PhaseResult[] = [];
    for (const size of sizes) {
      const name = size >= 1 << 20 ? `${size >> 20} MiB` : `${size >> 10} KiB`;
      const stripes: Array<{ id: string; layout: ShardLayout }> = [];
      for (let b = 0; b < BLOBS; b++) {
        const id = `bench-${size}-${b}`;
        const data = bytes(size, b + 1);
        const enc = await encodeBlob(data, CODE);
        await putStripe(id, enc, clients);
        await writeReplica(clients[0] as StoreClient, id, data);
        stripes.push({ id, layout: enc.layout });
      }
      results.push(
        await runPhase(`${name} replica read (one store)`, 1, durationMs, async (_w, i) => {
          await readReplica(clients[0] as StoreClient, (stripes[i % BLOBS] as { id: string }).id);
        }),
      );
      results.push(
        await runPhase(`${name} RS(4,2) read, all shards up (systematic)`, 1, durationMs, async (_w, i) => {
          const s = stripes[i % BLOBS] as { id: string; layout: ShardLayout };
          await readStripe(s.id, s.layout, clients);
        }),
      );
      // Two data shards' stores known down: the read goes to parity and decodes.
      const degraded = clients.map((c, i) => (i < 2 ? undefined : c));
      results.push(
        await runPhase(`${name} RS(4,2) degraded read, 2 data shards down`, 1, durationMs, async (_w, i) => {
          const s = stripes[i % BLOBS] as { id: string; layout: ShardLayout };
          const r = await readStripe(s.id, s.layout, degraded);
          if (!r.decoded) throw new Error('expected a decode');
        }),
      );
    }
    return results;
  } finally {
    await Promise.all(procs.map((p) => p.kill()));
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

async function writeReplica(client: StoreClient, blobId: string, data: Buffer): Promise<void> {
  async function* msgs() {
    yield {
      msg: {
        case: 'header' as const,
        value: { blobId, cookie: 0n, size: BigInt(data.length) },
      },
    };
    for (let at = 0; at < data.length; at += 256 * 1024) {
      yield { msg: { case: 'chunk' as const, value: data.subarray(at, at + 256 * 1024) } };
    }
  }
  await client.write(msgs());
}

async function readReplica(client: StoreClient, blobId: string): Promise<void> {
  for await (const _ of client.read({ blobId })) {
    // drain
  }
}
