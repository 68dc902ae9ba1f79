import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HaystackClient } from '../../internal/sdk/index.js';
import { startTracing } from '../../internal/server/tracing.js';
import { Cluster } from '../helpers/cluster.js';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.js';
import { bytes } from '../helpers/store-client.js';
import { spawnServer, tmpName } from '../helpers/tools.js';

describe('tracing configuration', () => {
  it('is off without an OTLP endpoint, and a malformed one is refused naming the variable', () => {
    expect(startTracing('store', 's', {})).toBeUndefined();
    expect(startTracing('store', 's', { OTEL_EXPORTER_OTLP_ENDPOINT: '' })).toBeUndefined();
    expect(() => startTracing('store', 's', { OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' })).toThrow(
      /OTEL_EXPORTER_OTLP_ENDPOINT="not a url" is not a URL/,
    );
  });

  it('a server process with a malformed endpoint exits 2 naming the variable', async () => {
    const err = await spawnServer({
      name: 'store',
      args: ['store', '--listen', '127.0.0.1:0', '--data', tmpName('trace-bad')],
      env: { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '::nope' },
    }).catch((e: unknown) => e);
    expect(String(err)).toMatch(/exited \(2\)/);
    expect(String(err)).toContain('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  });
});

// Per-blob layout: an upload asks the directory (allocate, commit). Placement mode
// (the default): gateways write to the blob's placement group without it.
describe.each([
  { layout: 'per-blob', directoryEnv: { PLACEMENT_GROUPS: '0' }, directory: true },
  { layout: 'placement groups', directoryEnv: {} as Record<string, string>, directory: false },
])(
  'one upload is one trace across Envoy, gateway, directory? and stores ($layout layout; real processes, OTLP)',
  ({ directoryEnv, directory }) => {
    let receiver: OtlpReceiver;
    let cluster: Cluster;

    beforeAll(async () => {
      receiver = await OtlpReceiver.start();
      const collector = { host: '127.0.0.1', port: Number(new URL(receiver.url).port) };
      cluster = await Cluster.start({
        env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_BSP_SCHEDULE_DELAY: '200' },
        directoryEnv,
        envoy: { tracing: { collector } },
      });
    });
    afterAll(async () => {
      await cluster?.stop();
      await receiver?.stop();
    });

    it('every span of the upload shares the trace Envoy started, parented hop by hop', async () => {
      const sdk = new HaystackClient({ url: cluster.url });
      const blob = await sdk.upload(bytes(200_000, 9), { contentType: 'application/octet-stream' });
      await sdk.close();

      // The gateway's span of this Upload, and through it the trace.
      let trace: ReceivedSpan[] = [];
      await expect
        .poll(
          () => {
            const upload = receiver.spans.find(
              (s) =>
                s.service === 'haystack-gateway' &&
                s.name === 'haystack.v1.BlobService/Upload' &&
                s.kind === 2,
            );
            trace = upload ? receiver.spans.filter((s) => s.traceId === upload.traceId) : [];
            const services = new Set(trace.map((s) => s.service));
            const stores = new Set(
              trace.filter((s) => s.service === 'haystack-store').map((s) => s.instance),
            );
            return (
              services.has('haystack-envoy') &&
              services.has('haystack-directory') === directory &&
              stores.size === 3
            );
          },
          { timeout: 30_000, interval: 250 },
        )
        .toBe(true);

      // One root: Envoy's span of the request; every other span's parent is in the trace.
      const ids = new Set(trace.map((s) => s.spanId));
      const roots = trace.filter((s) => !ids.has(s.parentSpanId));
      expect(roots.map((r) => r.service)).toEqual(['haystack-envoy']);
      expect(roots[0]!.parentSpanId).toBe('');
      const byId = new Map(trace.map((s) => [s.spanId, s]));
      const gatewayUpload = trace.find(
        (s) => s.service === 'haystack-gateway' && s.name.endsWith('/Upload'),
      )!;
      expect(byId.get(gatewayUpload.parentSpanId)?.service).toBe('haystack-envoy');
      // The stores' Write spans (server side) descend from the gateway's.
      const writes = trace.filter(
        (s) => s.service === 'haystack-store' && s.name === 'haystack.v1.StoreService/Write',
      );
      expect(writes.length).toBeGreaterThanOrEqual(1);
      const ancestors = (s: ReceivedSpan): string[] => {
        const p = byId.get(s.parentSpanId);
        return p ? [p.service, ...ancestors(p)] : [];
      };
      for (const w of writes) expect(ancestors(w)).toContain('haystack-gateway');
      // The directory took part (allocation / commit) in the per-blob layout, within the same trace.
      expect(trace.some((s) => s.service === 'haystack-directory' && s.kind === 2)).toBe(directory);
      // Nothing of this upload went to another trace: the blob's id is only in this one's calls.
      expect(blob.id).toMatch(/^[0-9a-f]{64}$/);
    });
  },
);
