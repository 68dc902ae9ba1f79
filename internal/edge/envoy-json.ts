/**
 * The JSON value an Envoy bootstrap (v3 API) is built from, the type URLs several parts
 * name, Envoy's duration strings, and the YAML writer for the result.
 */

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Envoy's duration string for a span in milliseconds: 1500 → "1.5s". */
export const dur = (ms: number) => `${(ms / 1000).toFixed(3).replace(/\.?0+$/, '') || '0'}s`;
export const HCM =
  'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager';
export const RATE = 'type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit';
export const CORS = 'type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy';
export const HTTP_OPTS = 'envoy.extensions.upstreams.http.v3.HttpProtocolOptions';

const PLAIN = /^[A-Za-z_][A-Za-z0-9_.@/-]*$/;

/** YAML for a JSON value (block style; strings quoted unless plainly safe). */
export function toYaml(v: Json, indent = 0): string {
  const pad = ' '.repeat(indent);
  const scalar = (x: Json): string => {
    if (typeof x === 'string') {
      if (PLAIN.test(x) && !/^(true|false|null|yes|no|on|off|y|n)$/i.test(x)) return x;
      // Double quotes inside and nothing to escape: single quotes (literal), as Biome formats YAML.
      if (x.includes('"') && !/['\\\n]/.test(x)) return `'${x}'`;
      return JSON.stringify(x);
    }
    return JSON.stringify(x);
  };
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    return v
      .map((item) => {
        if (item !== null && typeof item === 'object' && !(Array.isArray(item) && item.length === 0)) {
          const inner = toYaml(item, indent + 2);
          return `${pad}- ${inner.slice(indent + 2)}`;
        }
        return `${pad}- ${scalar(item)}`;
      })
      .join('\n');
  }
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v);
    if (entries.length === 0) return '{}';
    return entries
      .map(([k, x]) => {
        const key = PLAIN.test(k) ? k : JSON.stringify(k);
        if (
          x !== null &&
          typeof x === 'object' &&
          (Array.isArray(x) ? x.length > 0 : Object.keys(x).length > 0)
        ) {
          return `${pad}${key}:\n${toYaml(x, indent + 2)}`;
        }
        return `${pad}${key}: ${x !== null && typeof x === 'object' ? (Array.isArray(x) ? '[]' : '{}') : scalar(x)}`;
      })
      .join('\n');
  }
  return `${pad}${scalar(v)}`;
}
