/**
 * Routes of the public listener: retry policies for idempotent and other calls, and the
 * refusals of uploads too large for MAX_UPLOAD_SIZE before a byte is forwarded.
 */
import type { Json } from './envoy-json.js';

/** Methods that may run twice: Envoy retries them on UNAVAILABLE, resets and failed connects. */
export const IDEMPOTENT_RETRY: Json = {
  retry_on: 'unavailable,reset,connect-failure,refused-stream,retriable-status-codes',
  // Connect (HTTP/1.1) answers UNAVAILABLE as 503.
  retriable_status_codes: [503],
  num_retries: 3,
  per_try_timeout: '0s',
  retry_host_predicate: [
    {
      name: 'envoy.retry_host_predicates.previous_hosts',
      typed_config: {
        '@type': 'type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate',
      },
    },
  ],
  host_selection_retry_max_attempts: 5,
  retry_back_off: { base_interval: '0.025s', max_interval: '0.25s' },
};

/** Calls that are not repeated by Envoy (non-idempotent or client streams): only a refused connection. */
export const CONNECT_RETRY: Json = {
  retry_on: 'connect-failure,refused-stream',
  num_retries: 3,
  retry_host_predicate: [
    {
      name: 'envoy.retry_host_predicates.previous_hosts',
      typed_config: {
        '@type': 'type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate',
      },
    },
  ],
  host_selection_retry_max_attempts: 5,
};

/** A route to `cluster` (no overall timeout, 60 s idle) with its retry policy and per-filter config. */
export function route(
  match: Json,
  cluster: string,
  extra: Record<string, Json> = {},
  perFilter?: Json,
): Json {
  const { retry, ...rest } = extra;
  return {
    match,
    route: {
      cluster,
      timeout: '0s',
      idle_timeout: '60s',
      ...(retry ? { retry_policy: retry } : {}),
      ...rest,
    },
    ...(perFilter ? { typed_per_filter_config: perFilter } : {}),
  };
}

/**
 * Refusals of uploads whose declared Content-Length cannot hold a blob within MAX_UPLOAD_SIZE,
 * before a byte is forwarded. The limit means blob bytes on every protocol: binary gRPC,
 * gRPC-Web and Connect carry the bytes as they are (plus framing), gRPC-Web text and Connect
 * JSON as base64 (4/3 larger). Each protocol gets RESOURCE_EXHAUSTED in its own form naming
 * the limit: a trailers-only gRPC status (grpc-status 8), Connect's JSON error with 429.
 * Larger uploads with no or a smaller Content-Length reach the gateway, which refuses them
 * with the same status from the upload header or the message size.
 */
export function tooLargeRoutes(maxUploadBytes: number): Json[] {
  const message = `upload larger than ${maxUploadBytes} bytes (MAX_UPLOAD_SIZE)`;
  const slack = 64 * 1024;
  const binary = maxUploadBytes + slack;
  const base64 = Math.ceil((maxUploadBytes * 4) / 3) + slack;
  const rule = (contentType: string, limit: number, response: Json): Json => ({
    match: {
      safe_regex: { regex: '^/haystack\\.v1\\.BlobService/(Upload|Put)$' },
      headers: [
        { name: 'content-type', string_match: { safe_regex: { regex: contentType } } },
        { name: 'content-length', range_match: { start: limit + 1, end: Number.MAX_SAFE_INTEGER } },
      ],
    },
    ...(response as Record<string, Json>),
  });
  const grpc: Json = {
    direct_response: { status: 200 },
    response_headers_to_add: [
      { header: { key: 'grpc-status', value: '8' } },
      // Printable ASCII without '%' needs no percent-encoding (gRPC spec); Envoy would read % as a command.
      { header: { key: 'grpc-message', value: message } },
    ],
  };
  const connect: Json = {
    direct_response: {
      status: 429,
      body: { inline_string: JSON.stringify({ code: 'resource_exhausted', message }) },
    },
    response_headers_to_add: [{ header: { key: 'content-type', value: 'application/json' } }],
  };
  // Exact types: Envoy matches the route on the request as it arrived (the CORS filter asks
  // first), before the grpc_web filter turns gRPC-Web into application/grpc.
  return [
    rule('^application/grpc(-web-text(\\+proto)?|(-web)?\\+json)(;.*)?$', base64, grpc),
    rule('^application/grpc(-web)?(\\+proto)?(;.*)?$', binary, grpc),
    rule('^application/(connect\\+)?json(;.*)?$', base64, connect),
    rule('^application/(connect\\+)?proto(;.*)?$', binary, connect),
  ];
}
