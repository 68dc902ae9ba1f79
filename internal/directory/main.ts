import { DirectoryService } from '../../gen/haystack/v1/directory_pb.js';
import { runServerProcess } from '../server/run.js';
import type { DirectoryConfig } from './config.js';

/** `haystack directory`: one instance of the directory cluster. */
export async function runDirectory(cfg: DirectoryConfig): Promise<void> {
  await runServerProcess('directory', cfg.directoryId, cfg, async () => ({
    services: [{ desc: DirectoryService, register: (router) => router.service(DirectoryService, {}) }],
  }));
}
