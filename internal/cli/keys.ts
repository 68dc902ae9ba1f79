/**
 * `haystack keys rewrap [--store ID]`: KEK rotation without restarting the
 * stores (StoreService RewrapKeys on every store the directory knows, or the
 * one named). Each store re-reads its KEK_FILE and re-wraps its volume keys
 * under the newest KEK; the output says which KEKs still wrap keys there, so
 * an operator knows when the old one may leave the file (docs/security.md).
 */
import type { Command } from 'commander';
import { toHaystackError } from '../sdk/index.js';
import { type StoreFlags, store, targets } from './admin.js';
import { action, out } from './client.js';

export function registerKeysCommands(program: Command): void {
  const keys = program
    .command('keys')
    .description('encryption at rest: key-encryption key (KEK) maintenance');
  keys
    .command('rewrap')
    .option('--store <id>', 'only this store (id or host:port; default: every store the directory knows)')
    .description(
      'after adding a new KEK as the last line of KEK_FILE: re-wrap every volume key under it now (StoreService RewrapKeys, admin); exit 1 when a store fails',
    )
    .action(
      action(async (opts) => {
        let failed: unknown;
        const stillOld: string[] = [];
        for (const t of await targets(opts as StoreFlags)) {
          try {
            const r = await store(t.address).rewrapKeys({}, { timeoutMs: 60_000 });
            const old = r.keksInUse.filter((k) => k !== r.newestKek);
            if (old.length > 0) stillOld.push(t.id);
            if (opts.json) {
              out(
                JSON.stringify({
                  store: t.id,
                  newestKek: r.newestKek,
                  volumes: r.volumesTotal,
                  rewrapped: r.volumesRewrapped,
                  keksInUse: r.keksInUse,
                  reloaded: r.reloaded,
                }),
              );
              continue;
            }
            out(
              `${t.id.padEnd(14)} ${r.volumesRewrapped} of ${r.volumesTotal} volumes re-wrapped under ${r.newestKek}; KEKs in use: ${r.keksInUse.join(', ') || 'none'}`,
            );
          } catch (err) {
            // Keep going: the other stores' re-wraps are independent; exit 1 at the end.
            const e = toHaystackError(err);
            process.stderr.write(`haystack: ${t.id}: ${e.codeName}: ${e.message}\n`);
            failed ??= err;
          }
        }
        if (failed !== undefined) throw failed;
        if (stillOld.length > 0) {
          process.stderr.write(
            `haystack: older KEKs still wrap keys on ${stillOld.join(', ')}: keep them in KEK_FILE and re-run\n`,
          );
        }
      }),
    );
}
