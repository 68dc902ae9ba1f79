import { BlobService } from '../../gen/haystack/v1/blob_pb.js';
import { runServerProcess } from '../server/run.js';
import type { GatewayConfig } from './config.js';

/** `haystack gateway`: a stateless BlobService process. */
export async function runGateway(cfg: GatewayConfig): Promise<void> {
  await runServerProcess('gateway', cfg.gatewayId, cfg, async () => ({
    services: [{ desc: BlobService, register: (router) => router.service(BlobService, {}) }],
  }));
}
