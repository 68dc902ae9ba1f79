// The server side of bench/transport-bench.ts, run as its own process:
//   node --import tsx bench/transport-server.ts <haystack-direct|haystack-connect|grpc-js>
// Serves haystack.v1.StoreService with a stub that does no storage work (GetStats
// answers at once; Write reads the stream to its end and answers with the byte
// count), so what is measured is the RPC stack:
//   haystack-direct   internal/server startServer with the direct gRPC path on (what
//                     the stores run: plain gRPC straight from the HTTP/2 stream)
//   haystack-connect  the same startServer without it: connect-node serves the call
//   haystack-direct-mtls  haystack-direct over mTLS as the stores serve it (certificate
//                     and CA from TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE; callers'
//                     roles checked by the role table)
//   grpc-js           @grpc/grpc-js's Server, messages coded by the protobuf-es schemas
// Prints {"port": N} on stdout once it listens on 127.0.0.1; stops on SIGTERM.
import { readFileSync } from 'node:fs';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { createServiceImplSpec, type ServiceImpl } from '@connectrpc/connect';
import * as grpc from '@grpc/grpc-js';
import {
  StoreService,
  type StoreServiceGetStatsResponse,
  StoreServiceGetStatsResponseSchema,
  type WriteRequest,
  WriteRequestSchema,
  type WriteResponse,
  WriteResponseSchema,
} from '../gen/haystack/v1/store_pb.js';
import type { TransportSecurity } from '../internal/security/tls-config.js';
import { createLogger } from '../internal/server/logger.js';
import { startServer } from '../internal/server/server.js';

const kind = process.argv[2];
const MAX_MESSAGE = 8 * 1024 * 1024;

function stats(): StoreServiceGetStatsResponse {
  return create(StoreServiceGetStatsResponseSchema, { storeId: 'bench', needleCount: 1n });
}
function written(blobId: string, size: number): WriteResponse {
  return create(WriteResponseSchema, { blobId, size: BigInt(size) });
}

const impl: Partial<ServiceImpl<typeof StoreService>> = {
  getStats: async () => stats(),
  write: async (requests) => {
    let id = '';
    let n = 0;
    for await (const m of requests) {
      if (m.msg.case === 'header') id = m.msg.value.blobId;
      else if (m.msg.case === 'chunk') n += m.msg.value.length;
    }
    return written(id, n);
  },
};

/** The mTLS security of the haystack-direct-mtls server, from the files its parent wrote. */
function mtlsFromEnv(): TransportSecurity {
  const read = (k: string) => readFileSync(process.env[k] ?? '', 'utf8');
  return {
    mode: 'mtls',
    cert: read('TLS_CERT_FILE'),
    key: read('TLS_KEY_FILE'),
    ca: read('TLS_CA_FILE'),
    identity: { role: 'store', id: 'bench' },
    directoryPeerIds: [],
  };
}

async function serveHaystack(
  direct: boolean,
  mtls = false,
): Promise<{ port: number; close: () => Promise<void> }> {
  const s = await startServer({
    component: 'transport-bench',
    instance: kind ?? '',
    listen: '127.0.0.1:0',
    log: createLogger('transport-bench', kind ?? '', 'warn'),
    shutdownGraceMs: 1000,
    // h2c, except haystack-direct-mtls (the per-call cost of mTLS on the stores' path).
    security: mtls ? mtlsFromEnv() : { mode: 'plaintext' },
    services: [
      {
        desc: StoreService,
        register: (router) => router.service(StoreService, impl),
        ...(direct ? { direct: createServiceImplSpec(StoreService, impl) } : {}),
      },
    ],
  });
  return { port: s.port, close: () => s.close() };
}

async function serveGrpcJs(): Promise<{ port: number; close: () => Promise<void> }> {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE,
    'grpc.max_send_message_length': MAX_MESSAGE,
  });
  const path = (m: string) => `/${StoreService.typeName}/${m}`;
  server.addService(
    {
      getStats: {
        path: path('GetStats'),
        requestStream: false,
        responseStream: false,
        requestSerialize: () => Buffer.alloc(0),
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: (m: StoreServiceGetStatsResponse) =>
          Buffer.from(toBinary(StoreServiceGetStatsResponseSchema, m)),
        responseDeserialize: (b: Buffer) => fromBinary(StoreServiceGetStatsResponseSchema, b),
      },
      write: {
        path: path('Write'),
        requestStream: true,
        responseStream: false,
        requestSerialize: (m: WriteRequest) => Buffer.from(toBinary(WriteRequestSchema, m)),
        requestDeserialize: (b: Buffer) => fromBinary(WriteRequestSchema, b),
        responseSerialize: (m: WriteResponse) => Buffer.from(toBinary(WriteResponseSchema, m)),
        responseDeserialize: (b: Buffer) => fromBinary(WriteResponseSchema, b),
      },
    },
    {
      getStats: (
        _call: grpc.ServerUnaryCall<Buffer, StoreServiceGetStatsResponse>,
        cb: grpc.sendUnaryData<StoreServiceGetStatsResponse>,
      ) => cb(null, stats()),
      write: (
        call: grpc.ServerReadableStream<WriteRequest, WriteResponse>,
        cb: grpc.sendUnaryData<WriteResponse>,
      ) => {
        let id = '';
        let n = 0;
        call.on('data', (m: WriteRequest) => {
          if (m.msg.case === 'header') id = m.msg.value.blobId;
          else if (m.msg.case === 'chunk') n += m.msg.value.length;
        });
        call.on('end', () => cb(null, written(id, n)));
        call.on('error', () => {});
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return {
    port,
    close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}

const running =
  kind === 'haystack-direct'
    ? await serveHaystack(true)
    : kind === 'haystack-direct-mtls'
      ? await serveHaystack(true, true)
      : kind === 'haystack-connect'
        ? await serveHaystack(false)
        : kind === 'grpc-js'
          ? await serveGrpcJs()
          : (() => {
              throw new Error(
                `usage: transport-server.ts haystack-direct|haystack-direct-mtls|haystack-connect|grpc-js (got ${kind})`,
              );
            })();
process.stdout.write(`${JSON.stringify({ port: running.port })}\n`);
process.once('SIGTERM', () => void running.close().finally(() => process.exit(0)));
