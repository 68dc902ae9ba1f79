import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import {
  generateSigningKey,
  type Jwks,
  MAX_ACTIVE_KEYS,
  parseJwks,
  readSigningKeyFile,
} from '../auth/keys.js';
import { parseScopes, type Scope } from '../auth/scopes.js';
import { MAX_URL_TTL_SEC } from '../auth/signed-url.js';
import { createToken } from '../auth/token-sign.js';
import { parseDuration } from '../config/env.js';
import { action, clientFor, out } from './client.js';

/** A --ttl value (e.g. 90s, 12h, 30d; a bare number is seconds) as whole seconds. */
function ttlSeconds(text: string, maxSec: number): number {
  const units: Record<string, number> = { d: 86_400_000, h: 3_600_000 };
  const m = /^(\d+)([dh])$/.exec(text);
  const ms = m ? Number(m[1]) * (units[m[2] as string] as number) : parseDuration(text, 's');
  if (ms === undefined || ms < 1000 || ms > maxSec * 1000) {
    throw localError(`--ttl ${text}: expected a duration from 1s to ${maxSec}s (e.g. 15m, 12h, 30d)`);
  }
  return Math.floor(ms / 1000);
}

/** An error the CLI reports as LOCAL (not an RPC status). */
function localError(message: string): Error {
  return Object.assign(new Error(message), { code: 'EINVAL' });
}

/** Writes `text` to `file` readable by its owner only. */
function writePrivate(file: string, text: string): void {
  writeFileSync(file, text, { mode: 0o600 });
}

/**
 * `haystack token keygen` (a new ES256 signing key, its public half added to a JWKS) and
 * `haystack token create` (a JWT for the given scopes, prefix and lifetime, signed with the key
 * in --key or $HAYSTACK_SIGNING_KEY_FILE). See docs/security.md, "Public access".
 */
export function registerTokenCommands(program: Command): void {
  const token = program.command('token').description('access tokens for the public API (JWTs)');

  token
    .command('keygen')
    .description('make a signing key and add its public key to a JWKS (rotation: at most two in use)')
    .requiredOption('--kid <id>', 'key id (e.g. 2026-12)')
    .requiredOption('--key-out <file>', 'the private key (JWK) to write, mode 0600')
    .requiredOption(
      '--jwks <file>',
      'the JWKS to create or add to (AUTH_JWKS_FILE of the gateways and Envoy)',
    )
    .action(
      // Commander merges this command's options into the global ones.
      action(async (opts) => {
        const flags = opts as unknown as { kid: string; keyOut: string; jwks: string };
        const existing: Jwks = existsSync(flags.jwks)
          ? parseJwks(readFileSync(flags.jwks, 'utf8'))
          : { keys: [] };
        if (existing.keys.some((k) => k.kid === flags.kid))
          throw localError(`kid ${flags.kid} is already in ${flags.jwks}`);
        if (existing.keys.length >= MAX_ACTIVE_KEYS) {
          throw localError(`${flags.jwks} already holds ${MAX_ACTIVE_KEYS} keys: retire one first`);
        }
        const { signing, publicJwk } = await generateSigningKey(flags.kid);
        writePrivate(flags.keyOut, `${JSON.stringify(signing.privateJwk)}\n`);
        writeFileSync(flags.jwks, `${JSON.stringify({ keys: [...existing.keys, publicJwk] }, null, 2)}\n`);
        out(`wrote ${flags.keyOut} (private, kid ${flags.kid}) and added its public key to ${flags.jwks}`);
      }),
    );

  token
    .command('create')
    .description('create a token (needs the signing key: --key or HAYSTACK_SIGNING_KEY_FILE)')
    .requiredOption(
      '--scope <scopes...>',
      'blob:read, blob:write, blob:delete, blob:list, admin (several allowed)',
    )
    .option('--prefix <prefix>', 'limit the token to blob ids starting with this', '')
    .option('--ttl <duration>', 'lifetime (e.g. 15m, 12h, 30d; at most 366d)', '1h')
    .option('--subject <name>', 'who the token is for (sub claim; logs and rate limits)', 'haystack-cli')
    .option('--key <file>', 'private signing key (JWK) (env HAYSTACK_SIGNING_KEY_FILE)')
    .action(
      action(async (opts) => {
        const flags = opts as unknown as {
          scope: string[];
          prefix: string;
          ttl: string;
          subject: string;
          key?: string;
        };
        const keyFile = flags.key ?? process.env.HAYSTACK_SIGNING_KEY_FILE;
        if (!keyFile) throw localError('no signing key: pass --key FILE or set HAYSTACK_SIGNING_KEY_FILE');
        let scopes: Set<Scope>;
        try {
          scopes = parseScopes(flags.scope.join(' '));
        } catch (err) {
          throw localError((err as Error).message);
        }
        const ttlSec = ttlSeconds(flags.ttl, 366 * 86_400);
        let key: ReturnType<typeof readSigningKeyFile>;
        try {
          key = readSigningKeyFile(keyFile);
        } catch (err) {
          throw localError((err as Error).message);
        }
        const jwt = await createToken(key, {
          scopes,
          prefix: flags.prefix,
          ttlSec,
          subject: flags.subject,
        }).catch((err: Error) => {
          throw localError(err.message);
        });
        const expiresAt = new Date(Date.now() + ttlSec * 1000).toISOString();
        out(
          opts.json
            ? JSON.stringify({ token: jwt, scopes: [...scopes], prefix: flags.prefix, expiresAt })
            : jwt,
        );
      }),
    );

  program
    .command('url')
    .argument('<id>', 'blob id')
    .option('--ttl <duration>', `lifetime (at most ${MAX_URL_TTL_SEC / 86_400}d)`, '1h')
    .option(
      '--capability',
      "the paper's capability URL /blobs/{id}/{cookie} instead: no expiry (admin tokens only)",
    )
    .description('a signed read URL for a blob: loads without a token until it expires (needs blob:read)')
    .action(
      action(async (opts, id: string) => {
        const flags = opts as unknown as { ttl: string; capability?: boolean };
        const client = clientFor(opts);
        try {
          const url = flags.capability
            ? await client.capabilityUrl(id)
            : await client.signedUrl(id, { ttlSeconds: ttlSeconds(flags.ttl, MAX_URL_TTL_SEC) });
          out(opts.json ? JSON.stringify({ id, url }) : url);
        } finally {
          await client.close();
        }
      }),
    );
}
