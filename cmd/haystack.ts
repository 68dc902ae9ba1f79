#!/usr/bin/env node
// The one `haystack` binary: server subcommands, the local dev cluster and client commands.
import path from 'node:path';
import { Command } from 'commander';
import { registerAdminCommands } from '../internal/cli/admin.js';
import { registerCertsCommands } from '../internal/cli/certs.js';
import { registerClientCommands } from '../internal/cli/client.js';
import { runDev } from '../internal/cli/dev.js';
import { stopDev } from '../internal/cli/dev-pidfile.js';
import { registerKeysCommands } from '../internal/cli/keys.js';
import { registerPlacementCommands } from '../internal/cli/placement.js';
import { registerTokenCommands } from '../internal/cli/token.js';
import { packageVersion } from '../internal/cli/version.js';
import { ConfigError } from '../internal/config/env.js';
import { DIRECTORY_ENV_HELP, readDirectoryConfig } from '../internal/directory/config.js';
import { runDirectory } from '../internal/directory/main.js';
import { RATE_LIMIT_ENV_HELP } from '../internal/edge/rate-limit-spec.js';
import { GATEWAY_ENV_HELP, readGatewayConfig } from '../internal/gateway/config.js';
import { runGateway } from '../internal/gateway/main.js';
import { REPLICATION_ENV_HELP, readReplicationConfig } from '../internal/replication/config.js';
import { runReplication } from '../internal/replication/main.js';
import { readStoreConfig, STORE_ENV_HELP } from '../internal/store/config.js';
import { runStore } from '../internal/store/main.js';

type Flags = { listen?: string; data?: string };

/** Runs a server subcommand; a configuration problem exits 2 naming the variable. */
function server<C>(name: string, read: (flags: Flags) => C, run: (cfg: C) => Promise<void>) {
  return async (flags: Flags) => {
    let cfg: C;
    try {
      cfg = read(flags);
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`haystack ${name}: ${err.message}\n`);
        process.exit(2);
      }
      throw err;
    }
    await run(cfg).catch((err: unknown) => {
      process.stderr.write(`haystack ${name}: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    });
  };
}

const program = new Command('haystack')
  .description('Haystack distributed blob store: servers, local cluster and client')
  .version(packageVersion(), '-V, --version', 'print the version')
  .showHelpAfterError();

program
  .command('store')
  .description('run a store: volumes of needles on local disk (StoreService)')
  .option('--listen <host:port>', 'address to serve on (env LISTEN, default 127.0.0.1:8001)')
  .option('--data <dir>', 'data directory (env DATA_DIR)')
  .addHelpText('after', `\nEnvironment:${STORE_ENV_HELP}`)
  .action(server('store', readStoreConfig, runStore));

program
  .command('directory')
  .description('run a directory instance: blob metadata, store registry, allocation (DirectoryService)')
  .option('--listen <host:port>', 'address to serve on (env LISTEN, default 127.0.0.1:9000)')
  .option('--data <dir>', 'data directory (env DATA_DIR)')
  .addHelpText('after', `\nEnvironment:${DIRECTORY_ENV_HELP}`)
  .action(server('directory', readDirectoryConfig, runDirectory));

program
  .command('replication')
  .description('run a replication manager (ReplicationService)')
  .option('--listen <host:port>', 'address to serve on (env LISTEN, default 127.0.0.1:9003)')
  .addHelpText('after', `\nEnvironment:${REPLICATION_ENV_HELP}`)
  .action(server('replication', readReplicationConfig, runReplication));

program
  .command('gateway')
  .description('run a gateway: the public BlobService and GET /blobs/{id}')
  .option('--listen <host:port>', 'address to serve on (env LISTEN, default 127.0.0.1:8100)')
  .addHelpText('after', `\nEnvironment:${GATEWAY_ENV_HELP}`)
  .action(server('gateway', readGatewayConfig, runGateway));

const dev = program
  .command('dev')
  .description('run a whole local cluster (directories, stores, gateways, replication, Redis, Envoy)')
  .option('--data <dir>', 'data directory (default ./data)', './data')
  .addHelpText('after', `\nEnvironment (the edge):\n${RATE_LIMIT_ENV_HELP}`)
  .action(async (flags: { data: string }) => {
    await runDev({ dataDir: flags.data }).catch((err: unknown) => {
      // A bad setting (CORS_ORIGINS, EDGE_*_RATE_LIMIT, DEV_*): named, exit 2 as the servers do.
      if (!(err instanceof ConfigError)) throw err;
      process.stderr.write(`haystack dev: ${err.message}\n`);
      process.exit(2);
    });
  });
dev
  .command('stop')
  .description('stop the local cluster started on this data directory (its pidfile)')
  // --data is dev's own option (commander gives it to the parent wherever it appears).
  .action(async (_flags: unknown, cmd: Command) => {
    const pid = await stopDev(path.resolve(cmd.optsWithGlobals<{ data: string }>().data));
    process.stdout.write(pid === undefined ? 'not running\n' : `stopped (pid ${pid})\n`);
  });

registerClientCommands(program);
registerTokenCommands(program);
registerCertsCommands(program);
registerAdminCommands(program);
registerKeysCommands(program);
registerPlacementCommands(program);

await program.parseAsync(process.argv);
