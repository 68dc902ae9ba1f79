import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { Code, ConnectError } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectoryService } from '../../../gen/haystack/v1/directory_pb.js';
import { DirectoryClient } from '../../../internal/directory/client.js';
import { leaderEntry } from '../gateway/fakes.js';

/** Resolves when `signal` aborts. */
const aborted = (signal: AbortSignal) =>
  new Promise<void>((r) =>
    signal.aborted ? r() : signal.addEventListener('abort', () => r(), { once: true }),
  );

/**
 * A tiny real directory over HTTP/2 (plaintext): WatchMetadata sends one entry of
 * its `term` and keeps the stream open (a directory cut off from its peers); Locate
 * answers UNAVAILABLE when `locateFails`. Counts the watches it served.
 */
async function tinyDirectory(term: bigint, locateFails: boolean) {
  const served = { watches: 0, locates: 0 };
  const sessions = new Set<http2.ServerHttp2Session>();
  const server = http2.createServer(
    connectNodeAdapter({
      routes: (router) =>
        router.service(DirectoryService, {
          async *watchMetadata(req, ctx) {
            served.watches++;
            yield leaderEntry(req.fromIndex === 0n ? 1n : req.fromIndex, term, `directory-${term}`);
            await aborted(ctx.signal);
          },
          locate() {
            served.locates++;
            if (locateFails) throw new ConnectError('no leader here', Code.Unavailable);
            return {};
          },
        }),
    }),
  );
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  const close = async () => {
    for (const s of sessions) s.destroy();
    await new Promise((r) => server.close(r));
  };
  return { address, served, close };
}

/** The first message of a watch, and the controller that ends it. */
async function firstOf(client: DirectoryClient, req: Parameters<DirectoryClient['watchMetadata']>[0]) {
  const ctl = new AbortController();
  const it = client.watchMetadata(req, ctl.signal);
  const first = await it.next();
  ctl.abort();
  await it.return(undefined);
  if (first.done || first.value.msg.case !== 'entries') throw new Error('the watch sent no entries');
  return first.value.msg.value.entries[0]!.term;
}

// Review finding (a) of docs/faults.md N5: `nextSource` moved off the instance reads
// pointed at. A Locate that failed on the stale directory had already moved reads off
// it, so with two directories the next watch landed back on the stale one.
describe('DirectoryClient.watchMetadata with nextSource (two real directories)', () => {
  let stale: Awaited<ReturnType<typeof tinyDirectory>>;
  let current: Awaited<ReturnType<typeof tinyDirectory>>;
  beforeAll(async () => {
    stale = await tinyDirectory(12n, true);
    current = await tinyDirectory(13n, false);
  });
  afterAll(async () => {
    await stale.close();
    await current.close();
  });

  it('moves off the directory the watch streamed from, even after a failed read moved reads off it', async () => {
    const client = new DirectoryClient({
      addresses: [stale.address, current.address],
      security: { mode: 'plaintext' },
    });
    expect(await firstOf(client, { fromIndex: 0n })).toBe(12n);
    // A Locate fails on the stale directory and is answered by the other one.
    await client.locate(['b']);
    expect(stale.served.locates).toBe(1);
    expect(current.served.locates).toBe(1);
    // The gateway found its view behind: the next watch must come from the other directory.
    expect(await firstOf(client, { fromIndex: 2n, nextSource: true })).toBe(13n);
    expect(stale.served.watches).toBe(1);
    expect(current.served.watches).toBe(1);
  });

  it('moves off the directory the watch streamed from when reads still point at it', async () => {
    const client = new DirectoryClient({
      addresses: [current.address, stale.address],
      security: { mode: 'plaintext' },
    });
    const before = { stale: stale.served.watches, current: current.served.watches };
    expect(await firstOf(client, { fromIndex: 0n })).toBe(13n);
    expect(await firstOf(client, { fromIndex: 2n, nextSource: true })).toBe(12n);
    expect(stale.served.watches - before.stale).toBe(1);
    expect(current.served.watches - before.current).toBe(1);
  });
});
