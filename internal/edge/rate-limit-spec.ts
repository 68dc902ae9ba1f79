import { type EnvReader, parseDuration } from '../config/env.js';
import type { EnvoyOptions } from './envoy-config.js';
import {
  DEFAULT_DELETE_RATE_LIMIT,
  DEFAULT_RATE_LIMIT_CLIENTS,
  DEFAULT_READ_RATE_LIMIT,
  DEFAULT_UPLOAD_RATE_LIMIT,
  type RateLimit,
} from './envoy-rate-limit.js';

/** Envoy refuses token buckets refilled more often than every 50 ms. */
const MIN_FILL_MS = 50;
const MAX_TOKENS = 1_000_000_000;

/**
 * Parses `<tokens>/<period>[:<burst>]`: `tokens` added every `period` (a duration: 1s, 500ms,
 * 1m; a bare number is seconds), up to `burst` held (default: `tokens`). `100/1s:200` = 100
 * requests a second, bursts of 200. Undefined when malformed or out of bounds.
 */
export function parseRateLimit(text: string): RateLimit | undefined {
  const m = /^(\d{1,10})\/([0-9.]+[a-z]*)(?::(\d{1,10}))?$/.exec(text.trim());
  if (!m) return undefined;
  const tokensPerFill = Number(m[1]);
  const fillIntervalMs = parseDuration(m[2] ?? '', 's');
  const maxTokens = m[3] === undefined ? tokensPerFill : Number(m[3]);
  if (fillIntervalMs === undefined || fillIntervalMs < MIN_FILL_MS || fillIntervalMs > 86_400_000)
    return undefined;
  if (tokensPerFill < 1 || maxTokens < 1 || tokensPerFill > MAX_TOKENS || maxTokens > MAX_TOKENS)
    return undefined;
  return { maxTokens, tokensPerFill, fillIntervalMs };
}

/** `100/1s:200` for a RateLimit (what parseRateLimit reads back). */
export function formatRateLimit(r: RateLimit): string {
  const period = r.fillIntervalMs % 1000 === 0 ? `${r.fillIntervalMs / 1000}s` : `${r.fillIntervalMs}ms`;
  return `${r.tokensPerFill}/${period}:${r.maxTokens}`;
}

export const RATE_LIMIT_ENV_HELP = `  EDGE_UPLOAD_RATE_LIMIT  per client (token subject, or address when anonymous): uploads,
                          as TOKENS/PERIOD[:BURST] (default ${formatRateLimit(DEFAULT_UPLOAD_RATE_LIMIT)})
  EDGE_DELETE_RATE_LIMIT  per client: deletes (default ${formatRateLimit(DEFAULT_DELETE_RATE_LIMIT)})
  EDGE_READ_RATE_LIMIT    per client: reads, GET /blobs/{id} (default ${formatRateLimit(DEFAULT_READ_RATE_LIMIT)})
  EDGE_RATE_LIMIT_CLIENTS clients tracked per route, least recently seen forgotten (default ${DEFAULT_RATE_LIMIT_CLIENTS})`;

/** The edge's per-client rate limits from EDGE_*_RATE_LIMIT (problems recorded on `r`). */
export function readRateLimits(
  r: EnvReader,
): Pick<EnvoyOptions, 'uploadRateLimit' | 'deleteRateLimit' | 'readRateLimit' | 'rateLimitClients'> {
  const one = (name: string, fallback: RateLimit): RateLimit => {
    const raw = r.string(name, '');
    if (raw === '') return fallback;
    const parsed = parseRateLimit(raw);
    if (!parsed) {
      r.problem(
        `${name}=${JSON.stringify(raw)}: expected TOKENS/PERIOD[:BURST] like 100/1s:200 (period ≥ ${MIN_FILL_MS}ms)`,
      );
      return fallback;
    }
    return parsed;
  };
  return {
    uploadRateLimit: one('EDGE_UPLOAD_RATE_LIMIT', DEFAULT_UPLOAD_RATE_LIMIT),
    deleteRateLimit: one('EDGE_DELETE_RATE_LIMIT', DEFAULT_DELETE_RATE_LIMIT),
    readRateLimit: one('EDGE_READ_RATE_LIMIT', DEFAULT_READ_RATE_LIMIT),
    rateLimitClients: r.int('EDGE_RATE_LIMIT_CLIENTS', DEFAULT_RATE_LIMIT_CLIENTS, {
      min: 1,
      max: 10_000_000,
    }),
  };
}
