#!/usr/bin/env node
// The one `haystack` binary: server subcommands, the local dev cluster and client commands.
import { Command } from 'commander';
import { registerClientCommands } from '../internal/cli/client.js';
import { runDev } from '../internal/cli/dev.js';
import { ConfigError } from '../internal/config/env.js';
import { DIRECTORY_ENV_HELP, readDirectoryConfig } from '../internal/directory/config.js';
import { runDirectory } from '../internal/directory/main.js';
import { GATEWAY_ENV_HELP, readGatewayConfig } from '../internal/gateway/config.js';
import { runGateway } from '../internal/gateway/main.js';
import { REPLICATION_ENV_HELP, readReplicationConfig } from '../internal/replication/config.js';
import { runReplication } from '../internal/replication/main.js';
import { widenHttp2ClientWindows } from '../internal/rpc/http2-windows.js';
import { readStoreConfig, STORE_ENV_HELP } from '../internal/store/config.js';
import { runStore } from '../internal/store/main.js';

// Every gRPC client this process opens (stores, directories, managers, gateways).
widenHttp2ClientWindows();

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

program
  .command('dev')
  .description('run a whole local cluster (directories, stores, gateways, replication, Redis, Envoy)')
  .option('--data <dir>', 'data directory (default ./data)', './data')
  .action(async (flags: { data: string }) => {
    await runDev({ dataDir: flags.data });
  });

registerClientCommands(program);

await program.parseAsync(process.argv);
