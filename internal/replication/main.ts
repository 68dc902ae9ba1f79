import { ReplicationService } from '../../gen/haystack/v1/replication_pb.js';
import { runServerProcess } from '../server/run.js';
import type { ReplicationConfig } from './config.js';

/** `haystack replication`: one replication manager instance. */
export async function runReplication(cfg: ReplicationConfig): Promise<void> {
  await runServerProcess('replication', cfg.managerId, cfg, async () => ({
    services: [{ desc: ReplicationService, register: (router) => router.service(ReplicationService, {}) }],
  }));
}
