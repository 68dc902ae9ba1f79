import { StoreService } from '../../gen/haystack/v1/store_pb.js';
import { runServerProcess } from '../server/run.js';
import type { StoreConfig } from './config.js';

/** `haystack store`: serves StoreService over this store's volumes. */
export async function runStore(cfg: StoreConfig): Promise<void> {
  await runServerProcess('store', cfg.storeId, cfg, async () => ({
    services: [{ desc: StoreService, register: (router) => router.service(StoreService, {}) }],
  }));
}
