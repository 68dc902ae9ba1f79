import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { create } from '@bufbuild/protobuf';
import { createClient } from '@connectrpc/connect';
import { connectNodeAdapter, createGrpcTransport } from '@connectrpc/connect-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoreHealth } from '../../gen/haystack/v1/common_pb.js';
import {
  AckMetadataResponseSchema,
  DirectoryService,
  WatchMetadataResponseSchema,
} from '../../gen/haystack/v1/directory_pb.js';
import { leaderChanged, storeRegistered } from '../helpers/directory-entries.js';
import { freePort } from '../helpers/redis.js';
import { type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const aborted = (signal: AbortSignal) =>
  new Promise<void>((r) =>
    signal.aborted ? r() : signal.addEventListener('abort', () => r(), { once: true }),
  );

/**
 * A leader that answers its follower's first WatchMetadata by keeping the stream
 * open and saying nothing (as a stream did after an HTTP/2 PING timeout under load
 * in the network-fault suite, 2026-12-03), and serves the log on every later one:
 * entries 1–2, then keepalives as real directories send them.
 */
async function silentOnceLeader() {
  const watches: bigint[] = [];
  const server = http2.createServer(
    connectNodeAdapter({
      routes: (router) =>
        router.service(DirectoryService, {
          async *watchMetadata(req, ctx) {
            watches.push(req.fromIndex);
            if (watches.length === 1) {
              await aborted(ctx.signal);
              return;
            }
            yield create(WatchMetadataResponseSchema, {
              term: 1n,
              commitIndex: 2n,
              msg: {
                case: 'entries',
                value: {
                  entries: [
                    leaderChanged(1, 1, 'directory-0'),
                    storeRegistered(2, 1, 'store-1', StoreHealth.HEALTHY),
                  ].filter((e) => e.index >= req.fromIndex),
                },
              },
            });
            while (!ctx.signal.aborted) {
              await sleep(200);
              yield create(WatchMetadataResponseSchema, {
                term: 1n,
                commitIndex: 2n,
                msg: { case: 'entries', value: { entries: [] } },
              });
            }
          },
          ackMetadata: () => create(AckMetadataResponseSchema, { commitIndex: 2n }),
        }),
    }),
  );
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    watches,
    close: async () => {
      for (const s of sessions) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

describe('a follower directory whose stream from the leader stays open and silent', () => {
  let leader: Awaited<ReturnType<typeof silentOnceLeader>>;
  let follower: ServerProcess;
  beforeAll(async () => {
    leader = await silentOnceLeader();
    const self = `127.0.0.1:${await freePort()}`;
    follower = await spawnServer({
      name: 'directory-1',
      args: ['directory', '--listen', self, '--data', tmpName('follower-stall')],
      env: {
        INSECURE_PLAINTEXT: '1',
        DIRECTORY_ID: 'directory-1',
        // No Redis: the first peer leads (an in-process lease), the follower follows it.
        REDIS_URL: '',
        DIRECTORY_PEERS: `${leader.address},${self}`,
        FOLLOWER_SYNC_INTERVAL: '200ms',
        // 2 s between messages, 8 s before the first (the silent stream here).
        WATCH_STALL_TIMEOUT: '2s',
        PLACEMENT_GROUPS: '0',
        LOG_LEVEL: 'debug',
      },
    });
  }, 90_000);
  afterAll(async () => {
    await follower?.stop();
    await leader?.close();
  });

  it('drops it after the stall time and catches up on a new stream (it used to wait forever)', {
    timeout: 60_000,
  }, async () => {
    const client = createClient(
      DirectoryService,
      createGrpcTransport({ baseUrl: `http://${follower.address}` }),
    );
    const deadline = Date.now() + 30_000;
    let applied = 0n;
    while (Date.now() < deadline) {
      const s = await client.getClusterStatus({ localOnly: true });
      applied = s.directories[0]?.appliedIndex ?? 0n;
      if (applied >= 2n) break;
      await sleep(200);
    }
    expect(applied, follower.logs().slice(-3000)).toBe(2n);
    expect(leader.watches.length).toBeGreaterThanOrEqual(2);
    expect(follower.logs()).toContain('follow stream stuck: reconnecting');
  });
});

describe('a directory serving WatchMetadata on an idle cluster', () => {
  let dir: ServerProcess;
  beforeAll(async () => {
    const self = `127.0.0.1:${await freePort()}`;
    dir = await spawnServer({
      name: 'directory-0',
      args: ['directory', '--listen', self, '--data', tmpName('watch-keepalive')],
      env: {
        INSECURE_PLAINTEXT: '1',
        DIRECTORY_ID: 'directory-0',
        REDIS_URL: '',
        DIRECTORY_PEERS: self,
        FOLLOWER_SYNC_INTERVAL: '500ms',
        PLACEMENT_GROUPS: '0',
      },
    });
  }, 90_000);
  afterAll(async () => {
    await dir?.stop();
  });

  it('sends a keepalive at least every FOLLOWER_SYNC_INTERVAL (at most 1 s) when nothing changes', {
    timeout: 60_000,
  }, async () => {
    const client = createClient(DirectoryService, createGrpcTransport({ baseUrl: `http://${dir.address}` }));
    // Wait for the lone directory to lead and commit its LeaderChanged.
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const s = await client.getClusterStatus({ localOnly: true });
      if (s.leaderId !== '' && (s.directories[0]?.appliedIndex ?? 0n) >= 1n) break;
      await sleep(200);
    }
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 4_000);
    const gaps: number[] = [];
    let last = 0;
    let entries = 0;
    try {
      for await (const msg of client.watchMetadata(
        { fromIndex: 1n, watcherId: 'test' },
        { signal: ctl.signal },
      )) {
        const now = performance.now();
        if (msg.msg.case === 'entries' && msg.msg.value.entries.length > 0) entries++;
        else if (last > 0) gaps.push(now - last);
        last = now;
      }
    } catch (err) {
      if (!ctl.signal.aborted) throw err;
    } finally {
      clearTimeout(timer);
    }
    expect(entries).toBeGreaterThanOrEqual(1);
    // About 500 ms apart (nothing at all before keepalives): a margin for a loaded box.
    expect(gaps.length).toBeGreaterThanOrEqual(3);
    expect(Math.max(...gaps)).toBeLessThan(3_000);
  });
});
