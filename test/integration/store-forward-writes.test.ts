import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ForwardWritesRequest,
  ForwardWritesRequestSchema,
  type ForwardWritesResponse,
  StoreService,
  WriteHeaderSchema,
} from '../../gen/haystack/v1/store_pb.js';
import { createDirectGrpcTransport } from '../../internal/rpc/direct-transport.js';
import { FORWARD_INLINE_MAX } from '../../internal/store/forward-writes.js';
import { httpsGet, securityOf, TEST_GATEWAY } from '../helpers/pki.js';
import { bytes, readBlob, sameBytes, storeClient, writeBlob } from '../helpers/store-client.js';
import { type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

// StoreService.ForwardWrites between real store processes over mTLS: a Write with
// forward_to of a blob of at most 64 KiB reaches each replica on one long-lived stream
// per replica store instead of a Write stream per replica (internal/store/forward-writes.ts).

const startStore = (
  name: string,
  dataDir = tmpName(name),
  listen = '127.0.0.1:0',
  env: Record<string, string> = {},
) =>
  spawnServer({
    name,
    args: ['store', '--listen', listen, '--data', dataDir],
    env: { STORE_ID: name, ...env },
  });

/** haystack_rpc_handled_total of one method at a store, all codes summed. */
async function handled(p: ServerProcess, method: string): Promise<number> {
  const { body } = await httpsGet(`https://${p.address}/metrics`);
  let n = 0;
  for (const line of body.split('\n')) {
    if (line.startsWith('haystack_rpc_handled_total{') && line.includes(`method="${method}"`)) {
      n += Number(line.split(' ').pop());
    }
  }
  return n;
}

const failure = async (p: Promise<unknown>) => {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error('expected the call to fail');
};

describe('small writes reach the other replicas on one ForwardWrites stream per replica', () => {
  const procs: ServerProcess[] = [];
  const dirs = ['fw-1', 'fw-2', 'fw-3'].map((n) => tmpName(n));
  const targets = () => procs.slice(1).map((p) => ({ storeId: p.name, address: p.address }));

  beforeAll(async () => {
    for (const [i, name] of ['fw-1', 'fw-2', 'fw-3'].entries()) procs.push(await startStore(name, dirs[i]));
  });
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()));
  });

  it('every replica holds each blob under the first store’s cookie and stamp, and served no Write for it', async () => {
    const first = storeClient(procs[0]!.address);
    const sizes = [0, 1, 1024, 4096, 65_535, FORWARD_INLINE_MAX];
    const blobs = Array.from({ length: 24 }, (_, i) => ({
      id: `small-${i}`,
      data: bytes(sizes[i % sizes.length]!, 100 + i),
    }));
    const answers = await Promise.all(
      blobs.map((b, i) =>
        writeBlob(first, b.id, b.data, { forwardTo: targets(), term: 1n, cookie: 1000n + BigInt(i) }),
      ),
    );
    for (const [i, res] of answers.entries()) {
      expect(res.replicas.map((r) => r.storeId).sort()).toEqual(['fw-1', 'fw-2', 'fw-3']);
      expect(res.cookie).toBe(1000n + BigInt(i));
    }
    for (const p of procs.slice(1)) {
      const replica = storeClient(p.address);
      for (const [i, b] of blobs.entries()) {
        expect(sameBytes(await readBlob(replica, b.id, { cookie: 1000n + BigInt(i) }), b.data)).toBe(
          'identical',
        );
        const { needle } = await replica.stat({ blobId: b.id });
        expect(needle?.writtenAtMs).toBe(answers[i]!.writtenAtMs);
      }
      expect(await handled(p, 'Write')).toBe(0);
    }
  });

  it('a blob above 64 KiB still goes to each replica on a Write stream of its own', async () => {
    const first = storeClient(procs[0]!.address);
    const data = bytes(FORWARD_INLINE_MAX + 1, 7);
    await writeBlob(first, 'large', data, { forwardTo: targets(), term: 1n });
    for (const p of procs.slice(1)) {
      expect(await handled(p, 'Write')).toBe(1);
      expect(sameBytes(await readBlob(storeClient(p.address), 'large'), data)).toBe('identical');
    }
  });

  it('a replica that is down fails the write UNAVAILABLE naming it; once it is back the writes flow again', async () => {
    const first = storeClient(procs[0]!.address);
    const address = procs[2]!.address;
    await procs[2]!.kill();
    const err = await failure(
      writeBlob(first, 'while-down', bytes(2048, 3), { forwardTo: targets(), term: 1n }),
    );
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toContain('fw-3');
    procs[2] = await startStore('fw-3', dirs[2], address);
    const data = bytes(2048, 4);
    const res = await writeBlob(first, 'after-restart', data, { forwardTo: targets(), term: 1n });
    expect(res.replicas.map((r) => r.storeId).sort()).toEqual(['fw-1', 'fw-2', 'fw-3']);
    expect(sameBytes(await readBlob(storeClient(procs[2]!.address), 'after-restart'), data)).toBe(
      'identical',
    );
  });
});

describe('FORWARD_INLINE_MAX=0', () => {
  const procs: ServerProcess[] = [];
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()));
  });

  it('sends every blob, an empty one too, on a Write stream of its own', async () => {
    procs.push(await startStore('fw0-1', tmpName('fw0-1'), '127.0.0.1:0', { FORWARD_INLINE_MAX: '0' }));
    procs.push(await startStore('fw0-2'));
    const [first, replica] = procs as [ServerProcess, ServerProcess];
    const forwardTo = [{ storeId: replica.name, address: replica.address }];
    const client = storeClient(first.address);
    await writeBlob(client, 'empty', new Uint8Array(0), { forwardTo, term: 1n });
    await writeBlob(client, 'small', bytes(1024, 1), { forwardTo, term: 1n });
    expect(await handled(replica, 'Write')).toBe(2);
    expect(sameBytes(await readBlob(storeClient(replica.address), 'small'), bytes(1024, 1))).toBe(
      'identical',
    );
  });
});

describe('a replica lost while the forwarding store still commits', () => {
  const procs: ServerProcess[] = [];
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()));
  });

  it('fails that write UNAVAILABLE naming the replica, and the forwarding store keeps serving', async () => {
    // Slow disks (FAULT_FSYNC_DELAY): the replica dies with the write in flight on its
    // stream, 1.5 s before the first store's own commit ends.
    procs.push(await startStore('fwk-1', tmpName('fwk-1'), '127.0.0.1:0', { FAULT_FSYNC_DELAY: '2500ms' }));
    procs.push(await startStore('fwk-2', tmpName('fwk-2'), '127.0.0.1:0', { FAULT_FSYNC_DELAY: '2000ms' }));
    const [first, replica] = procs as [ServerProcess, ServerProcess];
    const client = storeClient(first.address);
    const forwardTo = [{ storeId: replica.name, address: replica.address }];
    const writing = failure(writeBlob(client, 'lost-replica', bytes(4096, 1), { forwardTo, term: 1n }));
    await new Promise((r) => setTimeout(r, 1000));
    await replica.kill();
    const err = await writing;
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toContain('fwk-2');
    await new Promise((r) => setTimeout(r, 500));
    expect(first.child.exitCode).toBeNull();
    const alone = await writeBlob(client, 'after-loss', bytes(10, 2), { term: 1n });
    expect(alone.replicas.map((r) => r.storeId)).toEqual(['fwk-1']);
  });
});

describe('ForwardWrites trusts only stores, and judges each request', () => {
  let proc: ServerProcess;
  beforeAll(async () => {
    proc = await startStore('fw-solo');
  });
  afterAll(async () => {
    await proc?.stop();
  });

  const clientAs = async (identity: { role: 'store' | 'gateway'; id: string }) =>
    createClient(
      StoreService,
      createDirectGrpcTransport({ address: proc.address, security: await securityOf(identity) }),
    );
  async function exchange(
    identity: { role: 'store' | 'gateway'; id: string },
    requests: ForwardWritesRequest[],
  ): Promise<ForwardWritesResponse[]> {
    const client = await clientAs(identity);
    const out: ForwardWritesResponse[] = [];
    for await (const a of client.forwardWrites(
      (async function* () {
        yield* requests;
      })(),
    ))
      out.push(a);
    return out;
  }
  const request = (
    seq: bigint,
    blobId: string,
    content: Uint8Array,
    extra: { forwardTo?: boolean; size?: number } = {},
  ) =>
    create(ForwardWritesRequestSchema, {
      seq,
      content,
      header: create(WriteHeaderSchema, {
        blobId,
        size: BigInt(extra.size ?? content.length),
        forwardTo: extra.forwardTo ? [{ storeId: 'fw-other', address: '127.0.0.1:9' }] : [],
      }),
    });

  it('refuses a caller that is not a store: PERMISSION_DENIED, nothing written', async () => {
    const err = await failure(
      exchange({ role: TEST_GATEWAY.role as 'gateway', id: TEST_GATEWAY.id }, [
        request(1n, 'by-gateway', bytes(10, 1)),
      ]),
    );
    expect(err.code).toBe(Code.PermissionDenied);
    const stat = await failure(storeClient(proc.address).stat({ blobId: 'by-gateway' }));
    expect(stat.code).toBe(Code.NotFound);
  });

  it('answers a bad request INVALID_ARGUMENT by its seq and writes the good ones of the same stream', async () => {
    const answers = await exchange({ role: 'store', id: 'fw-peer' }, [
      request(1n, 'onward', bytes(10, 1), { forwardTo: true }),
      request(2n, 'short', bytes(10, 1), { size: 11 }),
      request(3n, 'fine', bytes(10, 2)),
    ]);
    const bySeq = new Map(answers.map((a) => [a.seq, a.result]));
    for (const seq of [1n, 2n]) {
      const r = bySeq.get(seq);
      expect(r?.case === 'error' && r.value.code).toBe(Code.InvalidArgument);
    }
    expect(bySeq.get(3n)?.case).toBe('written');
    expect(sameBytes(await readBlob(storeClient(proc.address), 'fine'), bytes(10, 2))).toBe('identical');
  });

  it('refuses a message larger than 64 KiB of content plus a header: RESOURCE_EXHAUSTED', async () => {
    const big = bytes(FORWARD_INLINE_MAX + 8192, 5);
    const err = await failure(exchange({ role: 'store', id: 'fw-peer' }, [request(1n, 'too-big', big)]));
    expect(err.code).toBe(Code.ResourceExhausted);
  });
});
