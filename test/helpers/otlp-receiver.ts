import http from 'node:http';
import { BinaryReader, type WireType } from '@bufbuild/protobuf/wire';

/** One exported span, as the receiver saw it (ids in lower-case hex). */
export interface ReceivedSpan {
  service: string;
  instance: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/**
 * The fields used here of an OTLP ExportTraceServiceRequest in protobuf
 * (opentelemetry/proto/collector/trace/v1): resource_spans(1) → resource(1) →
 * attributes(1) {key(1), value(2) {string_value(1)}}; scope_spans(2) → spans(2)
 * {trace_id(1), span_id(2), parent_span_id(4), name(5), kind(6)}.
 */
function decodeProtobuf(buf: Uint8Array): ReceivedSpan[] {
  const out: ReceivedSpan[] = [];
  const fields = (b: Uint8Array, on: (no: number, r: BinaryReader, wt: WireType) => void) => {
    const r = new BinaryReader(b);
    while (r.pos < r.len) {
      const [no, wt] = r.tag();
      const before = r.pos;
      on(no, r, wt);
      if (r.pos === before) r.skip(wt, no);
    }
  };
  fields(buf, (no, r) => {
    if (no !== 1) return;
    const attrs: Record<string, string> = {};
    const spans: Omit<ReceivedSpan, 'service' | 'instance'>[] = [];
    fields(r.bytes(), (no2, r2) => {
      if (no2 === 1) {
        fields(r2.bytes(), (no3, r3) => {
          if (no3 !== 1) return;
          let key = '';
          let value = '';
          fields(r3.bytes(), (no4, r4) => {
            if (no4 === 1) key = r4.string();
            else if (no4 === 2)
              fields(r4.bytes(), (no5, r5) => {
                if (no5 === 1) value = r5.string();
              });
          });
          attrs[key] = value;
        });
      } else if (no2 === 2) {
        fields(r2.bytes(), (no3, r3) => {
          if (no3 !== 2) return;
          const s = { traceId: '', spanId: '', parentSpanId: '', name: '', kind: 0 };
          fields(r3.bytes(), (f, r4) => {
            if (f === 1) s.traceId = hex(r4.bytes());
            else if (f === 2) s.spanId = hex(r4.bytes());
            else if (f === 4) s.parentSpanId = hex(r4.bytes());
            else if (f === 5) s.name = r4.string();
            else if (f === 6) s.kind = r4.int32();
          });
          spans.push(s);
        });
      }
    });
    for (const s of spans)
      out.push({ ...s, service: attrs['service.name'] ?? '', instance: attrs['service.instance.id'] ?? '' });
  });
  return out;
}

interface JsonExport {
  resourceSpans?: {
    resource?: { attributes?: { key: string; value?: { stringValue?: string } }[] };
    scopeSpans?: {
      spans?: { traceId: string; spanId: string; parentSpanId?: string; name: string; kind?: number }[];
    }[];
  }[];
}

function decodeJson(body: JsonExport): ReceivedSpan[] {
  const out: ReceivedSpan[] = [];
  for (const rs of body.resourceSpans ?? []) {
    const attr = (k: string) => rs.resource?.attributes?.find((a) => a.key === k)?.value?.stringValue ?? '';
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          service: attr('service.name'),
          instance: attr('service.instance.id'),
          traceId: s.traceId.toLowerCase(),
          spanId: s.spanId.toLowerCase(),
          parentSpanId: (s.parentSpanId ?? '').toLowerCase(),
          name: s.name,
          kind: s.kind ?? 0,
        });
      }
    }
  }
  return out;
}

/**
 * An in-process OTLP/HTTP trace receiver (POST /v1/traces, JSON as the Node
 * exporter sends it or protobuf as Envoy does) for tests.
 */
export class OtlpReceiver {
  readonly spans: ReceivedSpan[] = [];
  private constructor(
    private readonly server: http.Server,
    readonly url: string,
  ) {}

  static async start(): Promise<OtlpReceiver> {
    let self: OtlpReceiver | undefined;
    const server = http.createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => {
        const body = Buffer.concat(parts);
        try {
          if (req.method !== 'POST' || req.url !== '/v1/traces')
            throw new Error(`unexpected ${req.method} ${req.url}`);
          const json = (req.headers['content-type'] ?? '').includes('json');
          self?.spans.push(
            ...(json ? decodeJson(JSON.parse(body.toString()) as JsonExport) : decodeProtobuf(body)),
          );
          res.writeHead(200, { 'content-type': json ? 'application/json' : 'application/x-protobuf' });
          res.end(json ? '{}' : '');
        } catch (err) {
          res.writeHead(400);
          res.end(String(err));
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as { port: number };
    self = new OtlpReceiver(server, `http://127.0.0.1:${port}`);
    return self;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}
