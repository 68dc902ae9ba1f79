import type { DescService } from '@bufbuild/protobuf';
import { type Client, createClient, type Transport } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import { createDirectGrpcTransport } from './direct-transport.js';
import { widenHttp2ClientWindows } from './http2-windows.js';

widenHttp2ClientWindows();

/**
 * Services whose servers take plain gRPC on the direct path (the store's data
 * plane, see internal/server/direct-grpc.ts); their clients use the matching
 * lean transport.
 */
const DIRECT_SERVICES = new Set(['haystack.v1.StoreService']);

/**
 * gRPC clients to peers by host:port, one HTTP/2 transport per address, reused
 * across calls (each transport multiplexes streams over one session).
 */
export class ClientPool {
  private readonly transports = new Map<string, Transport>();
  private readonly direct = new Map<string, Transport>();

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

  /** A direct gRPC transport to `address` (see direct-transport.ts). */
  directTransport(address: string): Transport {
    let t = this.direct.get(address);
    if (!t) {
      t = createDirectGrpcTransport({ address, pingIntervalMs: 10_000, idleTimeoutMs: 60_000 });
      this.direct.set(address, t);
    }
    return t;
  }

  client<S extends DescService>(service: S, address: string): Client<S> {
    const transport = DIRECT_SERVICES.has(service.typeName)
      ? this.directTransport(address)
      : this.transport(address);
    return createClient(service, transport);
  }
}
