import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../helpers/cluster.js';
import { tlsNodeOptions } from '../helpers/pki.js';
import { closedByServer, dribbleHeaders } from '../helpers/slow-client.js';
import type { ServerProcess } from '../helpers/tools.js';

/**
 * Issue 12, "no timeouts on the service ports": every listener kind (gateway,
 * directory, replication manager, store) closes connections that hold it for
 * nothing, in both transports: mTLS (the default: TLS handshake timeout) and
 * INSECURE_PLAINTEXT (the protocol-sniffing listener's timeout). One small
 * cluster of each, with the limits shortened by their validated variables, and
 * every case run against every process concurrently.
 */

const LIMITS = {
  LISTEN_HANDSHAKE_TIMEOUT: '2s',
  LISTEN_HEADERS_TIMEOUT: '2s',
  LISTEN_IDLE_TIMEOUT: '2s',
  LISTEN_MAX_STREAMS: '64',
};
const KINDS = ['gateway', 'directory', 'replication', 'store'] as const;
type Kind = (typeof KINDS)[number];

let mtls: Cluster;
let plain: Cluster;

beforeAll(async () => {
  const small = { directories: 1, stores: 1, gateways: 1, redis: false, envoy: false, env: LIMITS };
  // One after the other: each picks its free ports, and two picking at once may pick the same.
  mtls = await Cluster.start(small);
  plain = await Cluster.start({ ...small, plaintext: true });
});
afterAll(async () => {
  await Promise.all([mtls?.stop(), plain?.stop()]);
});

function processOf(c: Cluster, kind: Kind): { host: string; port: number } {
  const p: ServerProcess | undefined =
    kind === 'gateway'
      ? c.gateways[0]
      : kind === 'directory'
        ? c.directories[0]
        : kind === 'replication'
          ? c.replication
          : c.stores[0];
  if (!p) throw new Error(`the cluster has no ${kind}`);
  const [host, port] = p.address.split(':');
  return { host: host as string, port: Number(port) };
}

/** The SETTINGS_MAX_CONCURRENT_STREAMS the server announces on a new HTTP/2 session. */
async function announcedStreamCap(url: string, options: http2.SecureClientSessionOptions): Promise<number> {
  const s = http2.connect(url, options);
  try {
    return await new Promise<number>((resolve, reject) => {
      s.once('remoteSettings', (settings) => resolve(settings.maxConcurrentStreams ?? -1));
      s.once('error', reject);
    });
  } finally {
    s.destroy();
  }
}

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const EMPTY_SETTINGS = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);

describe.concurrent.each(KINDS)('mTLS listener of the %s', (kind) => {
  const tlsTo = async (alpn: string, onConnect?: (s: tls.TLSSocket) => void) => {
    const { host, port } = processOf(mtls, kind);
    const opts = await tlsNodeOptions();
    const s = tls.connect({ host, port, ...opts, ALPNProtocols: [alpn] }, () => onConnect?.(s));
    return s;
  };

  it('closes a TCP connection that never starts TLS (handshake timeout)', async () => {
    const { host, port } = processOf(mtls, kind);
    expect(await closedByServer(net.connect(port, host))).toBe(true);
  });

  it('closes an HTTP/2 connection that sends its preface and then nothing (idle timeout)', async () => {
    const s = await tlsTo('h2', (sock) => {
      sock.write(PREFACE);
      sock.write(EMPTY_SETTINGS);
    });
    expect(await closedByServer(s)).toBe(true);
  });

  it('cuts HTTP/1.1 headers dribbled a byte at a time before they are complete (header timeout)', async () => {
    const r = await dribbleHeaders(await tlsTo('http/1.1'));
    expect(r.closed).toBe(true);
    expect(r.sent).toBeLessThan(r.of);
  });

  it('announces the configured per-connection stream cap', async () => {
    const { host, port } = processOf(mtls, kind);
    expect(await announcedStreamCap(`https://${host}:${port}`, await tlsNodeOptions())).toBe(64);
  });
});

describe.concurrent.each(KINDS)('plaintext (INSECURE_PLAINTEXT) listener of the %s', (kind) => {
  const tcpTo = (onConnect?: (s: net.Socket) => void) => {
    const { host, port } = processOf(plain, kind);
    const s = net.connect(port, host, () => onConnect?.(s));
    return s;
  };

  it('closes a connection that never shows which protocol it speaks (protocol-sniff timeout)', async () => {
    // "PR" could still be the HTTP/2 preface: the listener waits for more, but not forever.
    expect(await closedByServer(tcpTo((s) => s.write('PR')))).toBe(true);
  });

  it('closes an h2c connection that sends its preface and then nothing (idle timeout)', async () => {
    const s = tcpTo((sock) => {
      sock.write(PREFACE);
      sock.write(EMPTY_SETTINGS);
    });
    expect(await closedByServer(s)).toBe(true);
  });

  it('cuts HTTP/1.1 headers dribbled a byte at a time before they are complete (header timeout)', async () => {
    const r = await dribbleHeaders(tcpTo());
    expect(r.closed).toBe(true);
    expect(r.sent).toBeLessThan(r.of);
  });

  it('announces the configured per-connection stream cap', async () => {
    const { host, port } = processOf(plain, kind);
    expect(await announcedStreamCap(`http://${host}:${port}`, {})).toBe(64);
  });
});
