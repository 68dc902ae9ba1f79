import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../internal/cli/processes.js';
import { tlsNodeOptions } from '../helpers/pki.js';
import { type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

const require = createRequire(import.meta.url);
const url = (p: string) => pathToFileURL(p).href;

/**
 * A client in its own process: a client stream whose generator never ends (a header the server
 * refuses, then chunks forever). The server answers at once; the process must then exit by
 * itself, which needs the server to end the HTTP/2 stream (RST_STREAM NO_ERROR after the
 * trailers, RFC 9113 §8.1) — else the write loop and the session keep it alive.
 */
function clientScript(protocol: 'grpc' | 'connect', address: string, tls: object): string {
  return `
import { createClient } from ${JSON.stringify(url(require.resolve('@connectrpc/connect')))};
import { createGrpcTransport, createConnectTransport } from ${JSON.stringify(url(require.resolve('@connectrpc/connect-node')))};
import { StoreService } from ${JSON.stringify(url(path.join(PROJECT_ROOT, 'dist/gen/haystack/v1/store_pb.js')))};
const baseUrl = 'https://${address}';
// mTLS as a gateway (the role that may Write to a store).
const nodeOptions = { ...${JSON.stringify(tls)}, checkServerIdentity: () => undefined };
const transport = ${protocol === 'grpc' ? 'createGrpcTransport({ baseUrl, nodeOptions })' : "createConnectTransport({ baseUrl, httpVersion: '2', nodeOptions })"};
const client = createClient(StoreService, transport);
async function* forever() {
  yield { msg: { case: 'header', value: { blobId: 'not a valid id', size: 1000000n, cookie: 1n } } };
  for (;;) {
    await new Promise((r) => setTimeout(r, 20));
    yield { msg: { case: 'chunk', value: new Uint8Array(1024) } };
  }
}
try {
  await client.write(forever());
  console.log('OK?');
} catch (e) {
  console.log('CODE', e.code);
}
`;
}

function runClient(file: string): Promise<{ exit: number | null; out: string; timedOut: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    // Generous: a hang is forever, an exit takes well under a second.
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ exit: code, out, timedOut: signal === 'SIGKILL' });
    });
  });
}

describe('a server that answers a client stream early ends the stream, so clients can exit', () => {
  let store: ServerProcess;

  beforeAll(async () => {
    store = await spawnServer({
      name: 'store',
      args: ['store', '--listen', '127.0.0.1:0', '--data', tmpName('early')],
      env: { STORE_ID: 'store-early' },
    });
  });
  afterAll(async () => {
    await store?.stop();
  });

  for (const protocol of ['grpc', 'connect'] as const) {
    it(`${protocol} (connect-node client over HTTP/2): INVALID_ARGUMENT, then the process exits on its own`, async () => {
      const file = `${tmpName(`early-${protocol}`)}.mjs`;
      const { checkServerIdentity: _, ...tls } = await tlsNodeOptions({ role: 'gateway', id: 'early' });
      writeFileSync(file, clientScript(protocol, store.address, tls));
      const runs = await Promise.all([0, 1, 2, 3, 4].map(() => runClient(file)));
      for (const r of runs) {
        expect(r.timedOut, r.out).toBe(false);
        expect(r.out).toContain('CODE 3');
        expect(r.exit).toBe(0);
      }
    });
  }
});
