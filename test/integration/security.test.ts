import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { create } from '@bufbuild/protobuf';
import { type Client, Code, ConnectError, createClient, type Transport } from '@connectrpc/connect';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryService, HeartbeatRequestSchema } from '../../gen/haystack/v1/directory_pb.js';
import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { clientSessionOptions } from '../../internal/rpc/session.js';
import { HaystackClient } from '../../internal/sdk/index.js';
import type { Identity, Role } from '../../internal/security/identity.js';
import { Cluster } from '../helpers/cluster.js';
import {
  grpcurlTlsArgs,
  noCertTransport,
  securityOf,
  TEST_GATEWAY,
  testTransport,
  tlsNodeOptions,
} from '../helpers/pki.js';
import { bytes, readBlob, sameBytes, storeClient, writeBlob } from '../helpers/store-client.js';
import { exec, grpcurl, grpcurlPlaintext, tool } from '../helpers/tools.js';

/**
 * Issue 12's attacks, replayed against a real cluster (real processes, Redis,
 * Envoy) that runs mTLS on every internal port: each attack with no
 * certificate, with a certificate of the wrong role, and with the right role
 * but a forged or out-of-bounds message. Each is refused with the precise
 * status; the cluster keeps its leader and the data stays intact.
 */

const MAX_U64 = (1n << 64n) - 1n;

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (e) {
    return Code[ConnectError.from(e).code] ?? String(e);
  }
}

let cluster: Cluster;
let sdk: HaystackClient;
let blobId: string;
const blob = bytes(40_000, 1212);

const as = (role: Role, id: string): Identity => ({ role, id });

async function dir(i: number, who: Identity | 'none'): Promise<Client<typeof DirectoryService>> {
  const address = cluster.directories[i]!.address;
  const t: Transport =
    who === 'none'
      ? await noCertTransport(address, 'directory')
      : await testTransport(address, 'directory', who);
  return createClient(DirectoryService, t);
}

async function store(i: number, who: Identity | 'none'): Promise<Client<typeof StoreService>> {
  const address = cluster.stores[i]!.address;
  const t: Transport =
    who === 'none' ? await noCertTransport(address, 'store') : await testTransport(address, 'store', who);
  return createClient(StoreService, t);
}

/**
 * The cluster still has a leader of its own and takes and serves writes. Under CPU
 * starvation the lease may move between the configured directories (a real election,
 * terms grow by a few); never to the stranger, never to a forged term.
 */
async function clusterIsHealthy(): Promise<void> {
  await cluster.leaderIndex();
  const s = await cluster.status();
  expect(s.leaderId).toMatch(/^directory-[0-2]$/);
  expect(s.term).toBeLessThan(1n << 20n);
  const data = bytes(10_000, Date.now() % 1000);
  const b = await sdk.upload(data);
  expect(sameBytes((await sdk.download(b.id)).data, data)).toBe('identical');
  expect(sameBytes((await sdk.download(blobId)).data, blob)).toBe('identical');
}

beforeAll(async () => {
  cluster = await Cluster.start({ directories: 3, stores: 3, gateways: 1 });
  sdk = new HaystackClient({ url: cluster.url });
  blobId = (await sdk.upload(blob)).id;
});
afterAll(async () => {
  await cluster?.stop();
});

describe('a fresh cluster serves only TLS on its internal ports', () => {
  it('plaintext grpcurl gets a TLS error on every internal port; grpcurl with the client cert and -cacert works', async () => {
    const ports = [
      ...cluster.directories,
      ...cluster.stores,
      ...cluster.gateways,
      ...(cluster.replication ? [cluster.replication] : []),
    ].map((p) => p.address);
    await Promise.all(
      ports.map(async (address) => {
        const plain = await grpcurlPlaintext(['-connect-timeout', '3', address, 'list']);
        expect(plain.code, address).not.toBe(0);
        expect(plain.stdout, address).not.toContain('haystack.v1');
        const ok = await grpcurl([address, 'grpc.health.v1.Health/Check']);
        expect(ok.code, `${address}: ${ok.stderr}`).toBe(0);
        expect(ok.stdout).toContain('SERVING');
      }),
    );
  });

  it('grpcurl without a client certificate reaches the TLS port but every RPC is UNAUTHENTICATED', async () => {
    const f = await grpcurlTlsArgs();
    const caOnly = f.slice(0, 2);
    const res = await exec(tool('grpcurl'), [
      ...caOnly,
      '-d',
      '{"term": "18446744073709551615", "candidate_id": "x"}',
      cluster.directories[0]!.address,
      'haystack.v1.DirectoryService/GetLogState',
    ]);
    expect(res.code).not.toBe(0);
    expect(res.stderr).toContain('Unauthenticated');
  });
});

describe('directory peer RPCs: a stranger cannot depose the leader', () => {
  it('GetLogState with term 2^64-1: UNAUTHENTICATED, PERMISSION_DENIED for a gateway and for a directory that is not a configured peer, INVALID_ARGUMENT for a peer; the leader stays', async () => {
    const req = { term: MAX_U64, candidateId: 'stranger', candidateAddress: '10.0.0.1:9' };
    for (let i = 0; i < 3; i++) {
      expect(await codeOf((await dir(i, 'none')).getLogState(req))).toBe('Unauthenticated');
      expect(await codeOf((await dir(i, as('gateway', 'gateway-0'))).getLogState(req))).toBe(
        'PermissionDenied',
      );
      const stranger = await dir(i, as('directory', 'stranger'));
      expect(await codeOf(stranger.getLogState(req))).toBe('PermissionDenied');
      // A configured peer asking in another's name, or with an impossible term.
      const peer = await dir(i, as('directory', `directory-${(i + 1) % 3}`));
      expect(await codeOf(peer.getLogState(req))).toBe('PermissionDenied');
      expect(await codeOf(peer.getLogState({ ...req, candidateId: `directory-${(i + 1) % 3}` }))).toBe(
        'InvalidArgument',
      );
      expect(
        await codeOf(peer.getLogState({ ...req, term: 1n << 62n, candidateId: `directory-${(i + 1) % 3}` })),
      ).toBe('InvalidArgument');
    }
    await clusterIsHealthy();
  });

  it('AckMetadata: no certificate, a store, another directory id or a huge term are refused', async () => {
    const li = await cluster.leaderIndex();
    const req = { directoryId: 'directory-9', term: MAX_U64, durableIndex: MAX_U64 };
    expect(await codeOf((await dir(li, 'none')).ackMetadata(req))).toBe('Unauthenticated');
    expect(await codeOf((await dir(li, as('store', 'store-0'))).ackMetadata(req))).toBe('PermissionDenied');
    const peer = await dir(li, as('directory', `directory-${(li + 1) % 3}`));
    expect(await codeOf(peer.ackMetadata(req))).toBe('PermissionDenied');
    expect(await codeOf(peer.ackMetadata({ ...req, directoryId: `directory-${(li + 1) % 3}` }))).toBe(
      'InvalidArgument',
    );
    // WatchMetadata of uncommitted entries: peers only.
    const gw = await dir(li, as('gateway', 'gateway-0'));
    expect(
      await codeOf(
        (async () => {
          for await (const _ of gw.watchMetadata({ includeUncommitted: true })) break;
        })(),
      ),
    ).toBe('PermissionDenied');
    await clusterIsHealthy();
  });
});

describe('store fencing: term 0 never skips the check', () => {
  it('Delete of a blob on all its stores: refused without a certificate, for a wrong role, with term 0 and with term 2^64-1; the blob stays readable everywhere', async () => {
    for (let i = 0; i < 3; i++) {
      expect(await codeOf((await store(i, 'none')).delete({ blobId, term: 0n }))).toBe('Unauthenticated');
      expect(await codeOf((await store(i, as('admin', 'ops'))).delete({ blobId, term: 0n }))).toBe(
        'PermissionDenied',
      );
      expect(await codeOf((await store(i, as('store', 'store-9'))).delete({ blobId, term: 0n }))).toBe(
        'PermissionDenied',
      );
      const manager = await store(i, as('replication', 'replication-0'));
      expect(await codeOf(manager.delete({ blobId, term: 0n }))).toBe('Unavailable');
      expect(await codeOf(manager.delete({ blobId, term: MAX_U64 }))).toBe('InvalidArgument');
      const gateway = await store(i, as('gateway', 'gateway-9'));
      expect(await codeOf(gateway.delete({ blobId, term: 0n }))).toBe('Unavailable');
      expect(await codeOf(gateway.delete({ blobId, term: 1n << 62n }))).toBe('InvalidArgument');
    }
    // Every replica intact, and writes are not "deposed" by a forged huge term.
    for (let i = 0; i < 3; i++) {
      const c = storeClient(cluster.stores[i]!.address, { direct: true });
      expect(sameBytes(await readBlob(c, blobId), blob)).toBe('identical');
    }
    await clusterIsHealthy();
  });
});

describe('store fencing: only a directory issues a directory term', () => {
  it("a gateway's Delete or forwarding Write with a term ahead of every directory's is refused PERMISSION_DENIED on every store, which keeps serving the real term", async () => {
    const forged = (await cluster.status()).term + 1000n;
    for (let i = 0; i < 3; i++) {
      const gateway = await store(i, as('gateway', 'gateway-9'));
      const refused = await gateway
        .delete({ blobId, term: forged })
        .catch((e: unknown) => ConnectError.from(e));
      expect(refused).toBeInstanceOf(ConnectError);
      expect((refused as ConnectError).code).toBe(Code.PermissionDenied);
      expect((refused as ConnectError).rawMessage).toMatch(/was never issued/);
      const next = (i + 1) % 3;
      const write = writeBlob(
        storeClient(cluster.stores[i]!.address, { direct: true }),
        `forged-${i}`,
        blob,
        {
          term: forged,
          forwardTo: [{ storeId: `store-${next}`, address: cluster.stores[next]!.address }],
        },
      );
      expect(await codeOf(write)).toBe('PermissionDenied');
    }
    for (let i = 0; i < 3; i++) {
      const c = storeClient(cluster.stores[i]!.address, { direct: true });
      expect(sameBytes(await readBlob(c, blobId), blob)).toBe('identical');
      expect(await codeOf(readBlob(c, `forged-${i}`))).toBe('NotFound');
    }
    // Had a store taken the forged term, every real gateway's write would now be "deposed".
    await clusterIsHealthy();
  });
});

describe('store identities: a store heartbeats only as itself', () => {
  it('a heartbeat as another store, with no certificate or from a gateway is refused; Puts keep succeeding', async () => {
    const li = await cluster.leaderIndex();
    const beat = (storeId: string, address: string) =>
      (async function* () {
        yield create(HeartbeatRequestSchema, {
          storeId,
          address,
          capacityBytes: 1n << 50n,
          freeBytes: 1n << 50n,
        });
      })();
    const drain = async (c: Client<typeof DirectoryService>, storeId: string, address: string) => {
      for await (const _ of c.heartbeat(beat(storeId, address))) break;
    };
    expect(await codeOf(drain(await dir(li, 'none'), 'store-x', '127.0.0.1:1'))).toBe('Unauthenticated');
    expect(await codeOf(drain(await dir(li, as('gateway', 'gateway-0')), 'store-x', '127.0.0.1:1'))).toBe(
      'PermissionDenied',
    );
    // A real store's certificate, claiming to be a stranger or to move store-0.
    const store1 = await dir(li, as('store', 'store-1'));
    expect(await codeOf(drain(store1, 'store-x', '127.0.0.1:1'))).toBe('PermissionDenied');
    expect(await codeOf(drain(store1, 'store-0', '127.0.0.1:1'))).toBe('PermissionDenied');
    // Free space beyond capacity is a lie whoever tells it.
    const bad = (async function* () {
      yield create(HeartbeatRequestSchema, { storeId: 'store-1', capacityBytes: 1n, freeBytes: 1n << 50n });
    })();
    expect(
      await codeOf(
        (async () => {
          for await (const _ of store1.heartbeat(bad)) break;
        })(),
      ),
    ).toBe('InvalidArgument');
    const s = await cluster.status();
    expect(s.stores.map((x) => x.storeId).sort()).toEqual(['store-0', 'store-1', 'store-2']);
    expect(s.stores.find((x) => x.storeId === 'store-0')?.address).toBe(cluster.stores[0]!.address);
    for (let i = 0; i < 10; i++) await sdk.upload(bytes(2000, i));
    await clusterIsHealthy();
  });
});

describe('no SSRF through forward_to and Replicate.source', () => {
  it('a store forwards only to a server whose certificate names the store the entry names; Replicate only from the manager', async () => {
    // A TCP listener that records whether anything but a TLS handshake arrives.
    const seen: Buffer[] = [];
    // It hangs up after the first bytes, so a store that dials it fails at once.
    const trap = net.createServer((s) =>
      s
        .on('data', (d) => {
          seen.push(d);
          s.destroy();
        })
        .on('error', () => {}),
    );
    await new Promise<void>((r) => trap.listen(0, '127.0.0.1', r));
    const trapAddr = `127.0.0.1:${(trap.address() as net.AddressInfo).port}`;
    try {
      const gw = storeClient(cluster.stores[0]!.address, { direct: true });
      const term = (await cluster.status()).term;
      // Forwarding to a directory (a real TLS server of our CA, but not a store).
      const err = await writeBlob(gw, 'ssrf-1', bytes(1000, 1), {
        term,
        forwardTo: [{ storeId: 'store-x', address: cluster.directories[0]!.address }],
      }).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(err?.code).toBe(Code.FailedPrecondition);
      expect(err?.rawMessage).toMatch(
        /spiffe:\/\/haystack\/directory\/directory-0, expected spiffe:\/\/haystack\/store\/store-x/,
      );
      // With the current term the store does dial (the gateway's right), but over mTLS:
      // the trap gets a TLS ClientHello (record type 22) and never a request byte.
      const toTrap = await codeOf(
        writeBlob(gw, 'ssrf-2', bytes(1000, 2), {
          term: (await cluster.status()).term,
          forwardTo: [{ storeId: 'store-y', address: trapAddr }],
        }),
      );
      expect(toTrap).not.toBe('OK');
      expect(seen.length).toBeGreaterThan(0);
      for (const d of seen) expect(d[0]).toBe(22);
      // Replicate: only the manager may ask; the gateway and no-certificate callers may not.
      const src = { storeId: 'store-x', address: trapAddr, zone: '' };
      expect(
        await codeOf((await store(1, 'none')).replicate({ blobId: 'ssrf-3', source: src, term: 1n })),
      ).toBe('Unauthenticated');
      expect(
        await codeOf(
          (await store(1, as('gateway', 'g'))).replicate({ blobId: 'ssrf-3', source: src, term: 1n }),
        ),
      ).toBe('PermissionDenied');
      expect(
        await codeOf(
          (await store(1, as('replication', 'replication-0'))).replicate({
            blobId: 'ssrf-3',
            source: src,
            term: 0n,
          }),
        ),
      ).toBe('Unavailable');
    } finally {
      trap.close();
    }
  });
});

/** A Stat of `blobId` on store `i`, as an operator: OK when the store holds it. */
async function statOn(i: number, blobId: string): Promise<string> {
  return codeOf((await store(i, as('admin', 'test'))).stat({ blobId }));
}

/** The replication manager's lease term (its fencing term for Replicate), once it holds the lease. */
async function managerTerm(): Promise<bigint> {
  const { ReplicationService } = await import('../../gen/haystack/v1/replication_pb.js');
  const m = createClient(ReplicationService, cluster.transport(cluster.replication!.address, 'replication'));
  for (let i = 0; i < 600; i++) {
    const { term } = await m.getStats({});
    if (term > 0n) return term;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the replication manager never took its lease');
}

async function errorOf(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e);
  }
  throw new Error('the call succeeded');
}

describe('store peers are pinned to the store id a request names them by', () => {
  it("a Write whose forward_to names store-1 at store-2's address or at a gateway's is refused FAILED_PRECONDITION and no store holds the blob", async () => {
    const gw = storeClient(cluster.stores[0]!.address, { direct: true });
    const wrong = [
      ['pin-fwd-store', cluster.stores[2]!.address, 'store/store-2'],
      ['pin-fwd-gateway', cluster.gateways[0]!.address, 'gateway/gateway-0'],
    ] as const;
    for (const [id, address, shown] of wrong) {
      const err = await errorOf(
        writeBlob(gw, id, bytes(50_000, 31), {
          term: (await cluster.status()).term,
          forwardTo: [{ storeId: 'store-1', address }],
        }),
      );
      expect(err.code, err.message).toBe(Code.FailedPrecondition);
      expect(err.rawMessage).toContain(`names store "store-1" at ${address}`);
      expect(err.rawMessage).toContain(
        `the server is spiffe://haystack/${shown}, expected spiffe://haystack/store/store-1`,
      );
      for (const i of [0, 1, 2]) expect(await statOn(i, id)).toBe('NotFound');
    }
    // The same Write naming store-1 at its own address is taken: the pin is all that differs.
    const ok = await writeBlob(gw, 'pin-fwd-right', bytes(50_000, 32), {
      term: (await cluster.status()).term,
      forwardTo: [{ storeId: 'store-1', address: cluster.stores[1]!.address }],
    });
    expect(ok.replicas.map((r) => r.storeId)).toEqual(['store-0', 'store-1']);
  });

  it('a Replicate from the manager whose source is a store under another id, a gateway or a directory is refused FAILED_PRECONDITION and nothing is written', async () => {
    // A blob only store-0 holds; store-1 is asked to copy it.
    const id = 'pin-replicate';
    const data = bytes(30_000, 33);
    await writeBlob(storeClient(cluster.stores[0]!.address, { direct: true }), id, data);
    const manager = await store(1, as('replication', 'replication-0'));
    const term = await managerTerm();
    const wrong = [
      [{ storeId: 'store-2', address: cluster.stores[0]!.address }, 'store/store-0'],
      [{ storeId: 'store-0', address: cluster.gateways[0]!.address }, 'gateway/gateway-0'],
      [{ storeId: 'store-0', address: cluster.directories[0]!.address }, 'directory/directory-0'],
    ] as const;
    for (const [source, shown] of wrong) {
      const err = await errorOf(manager.replicate({ blobId: id, source: { ...source, zone: '' }, term }));
      expect(err.code, err.message).toBe(Code.FailedPrecondition);
      expect(err.rawMessage).toContain(`names store "${source.storeId}" at ${source.address}`);
      expect(err.rawMessage).toContain(
        `the server is spiffe://haystack/${shown}, expected spiffe://haystack/store/${source.storeId}`,
      );
      expect(await statOn(1, id)).toBe('NotFound');
    }
    // Named by its own id, the same source is copied from.
    await manager.replicate({
      blobId: id,
      source: { storeId: 'store-0', address: cluster.stores[0]!.address, zone: '' },
      term,
    });
    expect(sameBytes(await readBlob(await store(1, as('admin', 'test')), id), data)).toBe('identical');
  });
});

describe('Envoy presents its own certificate upstream', () => {
  it('the public BlobService stays reachable through Envoy while gateways refuse callers without a certificate', async () => {
    expect(sameBytes((await sdk.download(blobId)).data, blob)).toBe('identical');
    const direct = createClient(
      (await import('../../gen/haystack/v1/blob_pb.js')).BlobService,
      await noCertTransport(cluster.gateways[0]!.address, 'gateway'),
    );
    expect(await codeOf(direct.stat({ blobId }))).toBe('Unauthenticated');
  });
});

describe('TLS sockets: a plaintext client is cut at the handshake', () => {
  it('a raw TCP client speaking HTTP/2 cleartext gets no answer but a closed connection', async () => {
    const [host, port] = cluster.stores[0]!.address.split(':');
    const closed = await new Promise<string>((resolve) => {
      const s = net.connect(Number(port), host, () => s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
      let got = '';
      s.on('data', (d) => {
        got += d.toString('latin1');
      });
      s.on('close', () => resolve(got));
      s.on('error', () => {});
    });
    expect(closed).not.toContain('HTTP/2');
  });
});

/** The protocol and suite a TLS connection to `address` settles on (the handshake only). */
function negotiated(address: string, options: tls.ConnectionOptions): Promise<string> {
  const [host, port] = address.split(':');
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host, port: Number(port), ALPNProtocols: ['h2'], ...options }, () => {
      resolve(`${s.getProtocol()} ${s.getCipher().name}`);
      s.destroy();
    });
    s.on('error', reject);
  });
}

describe('cipher suites: every TLS hop settles on AES-128-GCM (docs/security.md)', () => {
  it("a mesh client gets TLS 1.3 TLS_AES_128_GCM_SHA256 from stores, gateways and directories, a client preferring AES-256 too (the server's order decides), and Envoy's upstream TLS 1.2 uses ECDHE-ECDSA-AES128-GCM-SHA256", async () => {
    const security = await securityOf(TEST_GATEWAY);
    const addresses = [cluster.stores[0]!, cluster.gateways[0]!, cluster.directories[0]!].map(
      (p) => p.address,
    );
    for (const address of addresses) {
      // The mesh's own client options (rpc/session.ts), as every peer connection uses them.
      const session = http2.connect(
        `https://${address}`,
        clientSessionOptions(security, ['store', 'gateway', 'directory']),
      );
      const suite = await new Promise<string>((resolve, reject) => {
        session.once('connect', () => {
          const socket = session.socket as tls.TLSSocket;
          resolve(`${socket.getProtocol()} ${socket.getCipher().name}`);
        });
        session.once('error', reject);
      });
      session.destroy();
      expect(`${address}: ${suite}`).toBe(`${address}: TLSv1.3 TLS_AES_128_GCM_SHA256`);
      const aes256First = await negotiated(address, {
        ...(await tlsNodeOptions()),
        ciphers: 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256',
      });
      expect(`${address}: ${aes256First}`).toBe(`${address}: TLSv1.3 TLS_AES_128_GCM_SHA256`);
    }
    // Envoy's counters of the suites its upstream connections to the gateways used.
    const stats = await (
      await fetch(`${cluster.envoy!.adminUrl}/stats?filter=^cluster\\.gateways\\.ssl\\.`)
    ).text();
    const used = [...stats.matchAll(/ssl\.ciphers\.(\S+): (\d+)/g)]
      .filter((m) => m[2] !== '0')
      .map((m) => m[1]);
    expect(used).toEqual(['ECDHE-ECDSA-AES128-GCM-SHA256']);
  });
});

describe('Redis: ACL users with passwords', () => {
  it('the lease and cache Redis refuse a client without credentials and forbid administration to the service user', async () => {
    const { Redis } = await import('ioredis');
    const { quiet } = await import('../helpers/redis.js');
    const anon = quiet(
      new Redis(cluster.redis!.anonymousUrl, { maxRetriesPerRequest: 0, lazyConnect: true }),
    );
    await anon.connect().catch(() => {});
    expect(
      String(await anon.set('haystack:directory:leader', 'stranger').catch((e: Error) => e.message)),
    ).toMatch(/NOAUTH|NOPERM|WRONGPASS/);
    anon.disconnect();
    const user = quiet(new Redis(cluster.redis!.url, { maxRetriesPerRequest: 0 }));
    expect(await user.ping()).toBe('PONG');
    expect(String(await user.config('GET', '*').catch((e: Error) => e.message))).toMatch(/NOPERM/);
    expect(String(await user.flushall().catch((e: Error) => e.message))).toMatch(/NOPERM/);
    await user.quit();
    // The cluster took writes through Redis leases all along.
    expect((await cluster.status()).leaderId).toMatch(/^directory-/);
  });
});

describe('cache poisoning', () => {
  it('a value planted under a blob cache key is never served by GET /blobs/{id}; the mismatch is counted', async () => {
    const { redisClient } = await import('../helpers/redis.js');
    const { encode } = await import('../../internal/cache/redis-cache.js');
    const data = bytes(3000, 4242);
    const b = await sdk.upload(data);
    const evil = Buffer.alloc(3000, 0x41);
    // Even with the service's own Redis credentials, the attacker lacks the HMAC key.
    const r = redisClient(cluster.redis!.url);
    await r.set(
      `haystack:blob:${b.id}`,
      encode({
        meta: {
          blobId: b.id,
          size: 3000,
          sha256: b.sha256,
          contentType: 'application/octet-stream',
          createdAtMs: Date.now(),
          cookie: 0n,
          replicaCount: 3,
          targetReplicaCount: 3,
        },
        data: evil,
      }),
    );
    await r.quit();
    const res = await fetch(`${cluster.url}/blobs/${b.id}`, {
      headers: { authorization: `Bearer ${process.env.HAYSTACK_TOKEN}` },
    });
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).equals(data)).toBe(true);
    expect(sameBytes((await sdk.download(b.id)).data, data)).toBe('identical');
    const { httpsGet } = await import('../helpers/pki.js');
    const metrics = (await httpsGet(`https://${cluster.gateways[0]!.address}/metrics`)).body;
    expect(metrics).toMatch(
      /haystack_gateway_cache_lookups_total\{[^}]*result="integrity_failure"[^}]*\} [1-9]/,
    );
  });
});

describe('CLI downloads of a damaged blob', () => {
  it('a download cut by DATA_LOSS mid-stream exits non-zero, leaves no file under the final name nor a .part file, crashes with no unhandled error, and prints nothing to stdout', async () => {
    const { existsSync, mkdtempSync, readdirSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const path = await import('node:path');
    const { HAYSTACK_BIN } = await import('../../internal/cli/processes.js');
    const { flipBytesOnDisk } = await import('../faults/harness.js');
    // Larger than CACHE_MAX_BLOB_SIZE (1 MiB): never served from the cache. Every
    // replica damaged 2 MiB in: a store streams the first chunks, then its checksum fails.
    const data = bytes(3 << 20, 31337);
    const b = await sdk.upload(data);
    for (let i = 0; i < cluster.stores.length; i++) {
      await flipBytesOnDisk(path.join(cluster.dataDir, `store-${i}`), b.id, { dataOffset: 2 << 20 });
    }
    const dir = mkdtempSync(path.join(tmpdir(), 'cli-download-'));
    const env = { ...process.env, HAYSTACK_URL: cluster.url };
    const toFile = await exec(process.execPath, [HAYSTACK_BIN, 'download', b.id, `${dir}/photo.bin`], {
      env,
      timeoutMs: 120_000,
    });
    expect(toFile.code).not.toBe(0);
    expect(toFile.stderr).toMatch(/DATA_LOSS/);
    expect(toFile.stderr).not.toMatch(/ERR_STREAM_DESTROYED|Unhandled|node:internal/);
    expect(existsSync(`${dir}/photo.bin`)).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
    const toStdout = await exec(process.execPath, [HAYSTACK_BIN, 'download', b.id, '-'], {
      env,
      timeoutMs: 120_000,
    });
    expect(toStdout.code).not.toBe(0);
    expect(toStdout.stdout).toBe('');
    expect(toStdout.stderr).toMatch(/DATA_LOSS/);
    expect(toStdout.stderr).not.toMatch(/ERR_STREAM_DESTROYED|Unhandled|node:internal/);
  });
});
