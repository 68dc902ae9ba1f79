import { Code, ConnectError, createClient } from '@connectrpc/connect';
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from '@connectrpc/connect-node';
import type { ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus,
  HealthCheckResponseSchema,
} from '../../gen/grpc/health/v1/health_pb.js';
import { HAYSTACK_BIN } from '../../internal/cli/processes.js';
import { grpcJsUnary } from '../helpers/grpcjs.js';
import { httpsGet, tlsNodeOptions } from '../helpers/pki.js';
import { exec, grpcurl, type ServerProcess, spawnServer, tmpName } from '../helpers/tools.js';

const SERVERS = [
  { sub: 'store', service: 'haystack.v1.StoreService', method: 'Write', data: true },
  { sub: 'directory', service: 'haystack.v1.DirectoryService', method: 'Heartbeat', data: true },
  { sub: 'replication', service: 'haystack.v1.ReplicationService', method: 'ReportAccess', data: false },
  { sub: 'gateway', service: 'haystack.v1.BlobService', method: 'Upload', data: false },
] as const;

describe.each(SERVERS)('haystack $sub as a real process', ({ sub, service, method, data }) => {
  let proc: ServerProcess;

  beforeAll(async () => {
    const args = [sub, '--listen', '127.0.0.1:0'];
    if (data) args.push('--data', tmpName(sub));
    // Peers that do not answer: each server must still start, serve health and reflection.
    proc = await spawnServer({
      name: sub,
      args,
      env: {
        REDIS_URL: 'redis://127.0.0.1:1',
        DIRECTORY_ADDRS: '127.0.0.1:1',
        REPLICATION_ADDRS: '127.0.0.1:1',
      },
    });
  });

  afterAll(async () => {
    await proc?.kill();
  });

  it('lists its service, health and reflection through the real grpcurl', async () => {
    const res = await grpcurl([proc.address, 'list']);
    expect(res.stderr).toBe('');
    const services = res.stdout.trim().split('\n');
    expect(services).toEqual(
      expect.arrayContaining([
        service,
        'grpc.health.v1.Health',
        'grpc.reflection.v1.ServerReflection',
        'grpc.reflection.v1alpha.ServerReflection',
      ]),
    );
  });

  it('describes a method with no .proto files on the client', async () => {
    const res = await grpcurl([proc.address, 'describe', `${service}.${method}`]);
    expect(res.code).toBe(0);
    expect(res.stdout).toContain(`${service}.${method} is a method`);
    expect(res.stdout).toMatch(/rpc \w+ \( stream \.haystack\.v1\.\w+ \)/);
  });

  it('answers grpc.health.v1.Health/Check with SERVING for the server and the service', async () => {
    const all = await grpcurl([proc.address, 'grpc.health.v1.Health/Check']);
    expect(JSON.parse(all.stdout)).toEqual({ status: 'SERVING' });
    const one = await grpcurl([
      '-d',
      JSON.stringify({ service }),
      proc.address,
      'grpc.health.v1.Health/Check',
    ]);
    // A replication manager without its lease (Redis is unreachable here) is a
    // standby: the process serves, the service says NOT_SERVING so Envoy routes
    // around it.
    expect(JSON.parse(one.stdout)).toEqual({ status: sub === 'replication' ? 'NOT_SERVING' : 'SERVING' });
    const unknown = await grpcurl([
      '-d',
      '{"service":"no.such.Service"}',
      proc.address,
      'grpc.health.v1.Health/Check',
    ]);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain('NotFound');
  });

  it('serves Prometheus metrics over plain HTTP/1.1 on the same port', async () => {
    await grpcurl([proc.address, 'grpc.health.v1.Health/Check']);
    const res = await httpsGet(`https://${proc.address}/metrics`);
    expect(res.status).toBe(200);
    const text = res.body;
    expect(text).toMatch(
      /haystack_rpc_handled_total\{[^}]*service="grpc.health.v1.Health"[^}]*method="Check"[^}]*code="ok"/,
    );
    expect(text).toContain('haystack_rpc_duration_seconds_bucket');
    expect(text).toContain('process_cpu_user_seconds_total');
    // Role and id in an info metric; `instance` is Prometheus's (the scrape target).
    expect(text).toMatch(new RegExp(`^haystack_process_info\\{role="${sub}",id="[^"]+"\\} 1$`, 'm'));
    expect(text).not.toMatch(/[{,]instance="/);
  });

  it('ends with exit code 0 soon after SIGTERM', async () => {
    // stop() sends SIGKILL after 10 s, which would answer 'SIGKILL', not 0.
    const code = await proc.stop(10_000);
    expect(code).toBe(0);
  });
});

describe('one server, every client stack', () => {
  let proc: ServerProcess;

  beforeAll(async () => {
    proc = await spawnServer({
      name: 'store',
      args: ['store', '--listen', '127.0.0.1:0', '--data', tmpName('interop')],
    });
  });
  afterAll(async () => {
    await proc?.stop();
  });

  it('is called by @grpc/grpc-js, the reference gRPC implementation', async () => {
    const res = await grpcJsUnary(
      proc.address,
      '/grpc.health.v1.Health/Check',
      HealthCheckRequestSchema,
      HealthCheckResponseSchema,
      { service: 'haystack.v1.StoreService' },
    );
    expect(res.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    // Errors carry real gRPC status codes across stacks.
    const err = await grpcJsUnary(
      proc.address,
      '/grpc.health.v1.Health/Check',
      HealthCheckRequestSchema,
      HealthCheckResponseSchema,
      { service: 'nope' },
    ).catch((e: ServiceError) => e);
    expect((err as ServiceError).code).toBe(5); // NOT_FOUND
  });

  // Every stack over TLS with a client certificate (ALPN picks HTTP/2 or HTTP/1.1).
  const url = () => `https://${proc.address}`;
  it.each([
    [
      'gRPC over HTTP/2',
      async () => createGrpcTransport({ baseUrl: url(), nodeOptions: await tlsNodeOptions() }),
    ],
    [
      'Connect over HTTP/1.1',
      async () =>
        createConnectTransport({ baseUrl: url(), httpVersion: '1.1', nodeOptions: await tlsNodeOptions() }),
    ],
    [
      'Connect over HTTP/2',
      async () =>
        createConnectTransport({ baseUrl: url(), httpVersion: '2', nodeOptions: await tlsNodeOptions() }),
    ],
    [
      'gRPC-Web over HTTP/1.1',
      async () =>
        createGrpcWebTransport({ baseUrl: url(), httpVersion: '1.1', nodeOptions: await tlsNodeOptions() }),
    ],
  ])('is called by a Connect client using %s', async (_name, transport) => {
    const client = createClient(Health, await transport());
    const res = await client.check({ service: '' });
    expect(res.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    const err = await client.check({ service: 'nope' }).catch((e: unknown) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.NotFound);
  });

  it('streams health changes over Watch', async () => {
    const client = createClient(
      Health,
      createGrpcTransport({ baseUrl: url(), nodeOptions: await tlsNodeOptions() }),
    );
    const ctl = new AbortController();
    const stream = client.watch({ service: 'haystack.v1.StoreService' }, { signal: ctl.signal });
    for await (const msg of stream) {
      expect(msg.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      break;
    }
    ctl.abort();
  });
});

describe('configuration is validated at start', () => {
  it.each([
    ['store', 'MAX_VOLUME_SIZE', 'banana'],
    ['store', 'COMPACTION_EFFICIENCY_THRESHOLD', '1.5'],
    ['store', 'HEARTBEAT_INTERVAL', '-3'],
    ['directory', 'LEADER_TIMEOUT', 'soon'],
    ['directory', 'DEFAULT_REPLICA_COUNT', '0'],
    ['replication', 'NIGHTLY_AUDIT_HOUR', '24'],
    ['replication', 'MAX_REPLICA_COUNT', 'many'],
    ['gateway', 'CACHE_TTL', 'forever'],
    ['gateway', 'LISTEN', 'nohost'],
    ['store', 'TLS_CERT_FILE', '/nonexistent/tls.crt'],
    ['directory', 'INSECURE_PLAINTEXT', 'maybe'],
    ['gateway', 'LISTEN_IDLE_TIMEOUT', 'never'],
  ])('haystack %s exits non-zero naming %s', async (sub, name, value) => {
    const res = await exec(process.execPath, [HAYSTACK_BIN, sub], {
      env: { ...process.env, [name]: value, DATA_DIR: tmpName('cfg') },
      timeoutMs: 50_000, // a config error exits at once; at load average 30 node alone took over 15 s to get there
    });
    expect(res.code).not.toBe(0);
    expect(res.stderr).toContain(name);
    expect(res.stderr).toContain(JSON.stringify(value));
  });

  it('documents every flag and variable in --help', async () => {
    const res = await exec(process.execPath, [HAYSTACK_BIN, 'store', '--help']);
    expect(res.code).toBe(0);
    for (const word of [
      '--listen',
      '--data',
      'MAX_VOLUME_SIZE',
      'COMPACTION_EFFICIENCY_THRESHOLD',
      'HEARTBEAT_INTERVAL',
    ]) {
      expect(res.stdout).toContain(word);
    }
  });
});
