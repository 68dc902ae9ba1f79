import type { ClientHttp2Session } from 'node:http2';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import net from 'node:net';
import { CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW } from '../server/listener.js';

const require = createRequire(import.meta.url);
let installed = false;

/**
 * Widens the HTTP/2 flow-control windows of every client session this process
 * opens. Node starts sessions with a 64 KiB connection window, so 32 concurrent
 * blob streams share 64 KiB per round trip; connect-node creates its sessions
 * internally and offers no hook, hence the wrapper around http2.connect.
 */
export function widenHttp2ClientWindows(): void {
  if (installed) return;
  installed = true;
  const http2 = require('node:http2') as typeof import('node:http2');
  const connect = http2.connect;
  const wrapped = ((...args: Parameters<typeof connect>) => {
    const [authority, options, listener] = args as [string, Record<string, unknown> | undefined, unknown];
    const opts = typeof options === 'object' && options !== null ? options : {};
    const settings = {
      initialWindowSize: STREAM_WINDOW,
      maxFrameSize: MAX_FRAME_SIZE,
      ...(opts.settings as object | undefined),
    };
    const url = new URL(String(authority));
    // Small frames (headers, trailers, WINDOW_UPDATEs) must not wait for Nagle.
    const createConnection =
      url.protocol === 'http:'
        ? () =>
            net.connect({
              host: url.hostname.replace(/^\[|\]$/g, ''),
              port: Number(url.port || 80),
              noDelay: true,
            })
        : undefined;
    const session = (
      typeof options === 'function'
        ? connect(authority, { settings, ...(createConnection ? { createConnection } : {}) }, options)
        : connect(
            authority,
            { ...opts, settings, ...(createConnection ? { createConnection } : {}) },
            listener as never,
          )
    ) as ClientHttp2Session;
    session.once('localSettings', () => {
      if (!session.destroyed) session.setLocalWindowSize(CONNECTION_WINDOW);
    });
    return session;
  }) as typeof connect;
  http2.connect = wrapped;
  syncBuiltinESMExports();
}
