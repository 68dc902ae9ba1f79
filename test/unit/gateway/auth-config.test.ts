import { writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { generateSigningKey } from '../../../internal/auth/keys.js';
import { renderEnvoyConfig } from '../../../internal/edge/envoy-config.js';
import { readGatewayConfig } from '../../../internal/gateway/config.js';
import { tmpName } from '../../helpers/tools.js';

const PLAIN = { INSECURE_PLAINTEXT: '1' };

describe('gateway access settings, validated at start', () => {
  it('reads AUTH_JWKS_FILE, URL_SIGNING_KEYS and PUBLIC_READS', async () => {
    const { publicJwk, signing } = await generateSigningKey('k1');
    const jwks = tmpName('jwks');
    writeFileSync(jwks, JSON.stringify({ keys: [publicJwk] }));
    const cfg = readGatewayConfig(
      {},
      {
        ...PLAIN,
        AUTH_JWKS_FILE: jwks,
        URL_SIGNING_KEYS: `${'ab'.repeat(32)},${'cd'.repeat(32)}`,
        PUBLIC_READS: '1',
      },
    );
    expect(cfg.authJwks?.keys.map((k) => k.kid)).toEqual(['k1']);
    expect(cfg.urlSigningKeys.map((k) => k.length)).toEqual([32, 32]);
    expect(cfg.publicReads).toBe(true);
    const defaults = readGatewayConfig({}, PLAIN);
    expect(defaults.authJwks).toBeUndefined();
    expect(defaults.publicReads).toBe(false);
    expect(defaults.urlSigningKeys).toHaveLength(1);

    const priv = tmpName('jwks-private');
    writeFileSync(priv, JSON.stringify({ keys: [signing.privateJwk] }));
    expect(() => readGatewayConfig({}, { ...PLAIN, AUTH_JWKS_FILE: priv })).toThrow(
      /AUTH_JWKS_FILE: .*private/,
    );
    expect(() => readGatewayConfig({}, { ...PLAIN, AUTH_JWKS_FILE: '/nonexistent' })).toThrow(
      /AUTH_JWKS_FILE: cannot read/,
    );
    expect(() => readGatewayConfig({}, { ...PLAIN, URL_SIGNING_KEYS: 'abcd' })).toThrow(
      /URL_SIGNING_KEYS: expected at least 32 bytes/,
    );
    expect(() => readGatewayConfig({}, { ...PLAIN, PUBLIC_READS: 'maybe' })).toThrow(/PUBLIC_READS/);
  });
});

const base = {
  listen: { host: '127.0.0.1', port: 1 },
  admin: { host: '127.0.0.1', port: 2 },
  gateways: [{ host: '127.0.0.1', port: 3 }],
  directories: [{ host: '127.0.0.1', port: 4 }],
  replication: [{ host: '127.0.0.1', port: 5 }],
  uploadRateLimit: { maxTokens: 1, tokensPerFill: 1, fillIntervalMs: 1000 },
  deleteRateLimit: { maxTokens: 1, tokensPerFill: 1, fillIntervalMs: 1000 },
  maxUploadBytes: 1024,
};
const text = (o: object) => JSON.stringify(renderEnvoyConfig({ ...base, corsOrigins: [], ...o }));

describe('Envoy access settings', () => {
  it('refuses "*" and anything but exact origins', () => {
    expect(() => text({ corsOrigins: ['*'] })).toThrow(/"\*" is not allowed/);
    expect(() => text({ corsOrigins: ['https://a.example/path'] })).toThrow(/exact origin/);
    expect(text({ corsOrigins: ['https://a.example'] })).toContain('"exact":"https://a.example"');
  });

  it('without auth: no jwt_authn and no directory, replication or reflection route; with auth: admin-only', () => {
    const open = text({});
    expect(open).not.toContain('jwt_authn');
    expect(open).not.toContain('/haystack.v1.DirectoryService/');
    expect(open).not.toContain('/haystack.v1.ReplicationService/');
    expect(open).not.toContain('ServerReflection');
    const guarded = text({ auth: {} });
    expect(guarded).toContain('envoy.filters.http.jwt_authn');
    expect(guarded).toContain('/.well-known/jwks.json');
    expect(guarded).toContain('/haystack.v1.DirectoryService/GetClusterStatus');
    expect(guarded).toContain('(^|.* )admin( .*|$)');
    expect(text({ auth: { jwksFile: '/etc/jwks.json' } })).toContain(
      '"local_jwks":{"filename":"/etc/jwks.json"}',
    );
  });
});

describe('per-client rate limits (EDGE_*_RATE_LIMIT, Envoy descriptors)', () => {
  it('parses TOKENS/PERIOD[:BURST] and refuses what Envoy would not take', async () => {
    const { parseRateLimit, formatRateLimit, readRateLimits } = await import(
      '../../../internal/edge/rate-limit-spec.js'
    );
    const { EnvReader } = await import('../../../internal/config/env.js');
    expect(parseRateLimit('100/1s:200')).toEqual({
      tokensPerFill: 100,
      fillIntervalMs: 1000,
      maxTokens: 200,
    });
    expect(parseRateLimit('5/500ms')).toEqual({ tokensPerFill: 5, fillIntervalMs: 500, maxTokens: 5 });
    expect(parseRateLimit('60/1m:10')).toEqual({ tokensPerFill: 60, fillIntervalMs: 60_000, maxTokens: 10 });
    for (const bad of ['', '100', '100/0s', '0/1s', '10/10ms', '1/1s:0', 'x/1s', '1/1s:', '-1/1s']) {
      expect(parseRateLimit(bad), bad).toBeUndefined();
    }
    expect(formatRateLimit({ tokensPerFill: 100, fillIntervalMs: 1000, maxTokens: 200 })).toBe('100/1s:200');
    const r = new EnvReader({ EDGE_READ_RATE_LIMIT: '7/2s:9', EDGE_RATE_LIMIT_CLIENTS: '50' });
    expect(readRateLimits(r)).toMatchObject({
      readRateLimit: { tokensPerFill: 7, fillIntervalMs: 2000, maxTokens: 9 },
      rateLimitClients: 50,
    });
    const bad = new EnvReader({ EDGE_UPLOAD_RATE_LIMIT: 'lots' });
    readRateLimits(bad);
    expect(() => bad.done()).toThrow(/EDGE_UPLOAD_RATE_LIMIT="lots": expected TOKENS\/PERIOD\[:BURST\]/);
  });

  it('keys every limited route by the verified sub or, without a token, the client address; never one shared bucket', () => {
    const cfg = JSON.parse(text({ auth: {} })) as unknown;
    const limits: Record<string, unknown>[] = [];
    const walk = (v: unknown) => {
      if (Array.isArray(v)) v.forEach(walk);
      else if (v && typeof v === 'object') {
        const o = v as Record<string, unknown>;
        if (
          o['@type'] ===
            'type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit' &&
          o.descriptors
        )
          limits.push(o);
        Object.values(o).forEach(walk);
      }
    };
    walk(cfg);
    expect(new Set(limits.map((l) => l.stat_prefix))).toEqual(
      new Set(['upload_rate_limit', 'delete_rate_limit', 'read_rate_limit']),
    );
    for (const l of limits) {
      expect(l.always_consume_default_token_bucket).toBe(false);
      expect(JSON.stringify(l.rate_limits)).toContain('"path":[{"key":"jwt_payload"},{"key":"sub"}]');
      expect(JSON.stringify(l.rate_limits)).toContain('"remote_address":{}');
      expect(JSON.stringify(l.descriptors)).toContain('{"key":"subject","value":""}');
    }
    // Without edge tokens the address alone names a client.
    const open = text({});
    expect(open).not.toContain('jwt_payload');
    expect(open).toContain('{"entries":[{"key":"remote_address","value":""}]');
  });
});
