import type { DescService } from '@bufbuild/protobuf';
import { type Client, createClient, type Transport } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import { widenHttp2ClientWindows } from './http2-windows.js';

widenHttp2ClientWindows();

/**
 * gRPC clients to peers by host:port, one HTTP/2 transport per address, reused
 * across calls (each transport multiplexes streams over one session).
 */
export class ClientPool {
  private readonly transports = new Map<string, Transport>();

  transport(address: string): Transport {
    let t = this.transports.get(address);
    if (!t) {
      t = createGrpcTransport({
        baseUrl: `http://${address}`,
        pingIntervalMs: 10_000,
        idleConnectionTimeoutMs: 60_000,
      });
      this.transports.set(address, t);
    }
    return t;
  }

  client<S extends DescService>(service: S, address: string): Client<S> {
    return createClient(service, this.transport(address));
  }
}
