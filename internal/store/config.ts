import { COMMON_ENV_HELP, envReader, readServerConfig, type ServerConfig } from '../config/common.js';
import type { Env, EnvReader } from '../config/env.js';
import { HEAP_GROWING_ENV_HELP, readHeapGrowingPercent } from '../server/heap-growing.js';
import { type Keyring, loadKekFile, parseKeks } from './crypto/kek.js';
import { FORWARD_INLINE_MAX } from './forward-writes.js';

/** Configuration of a store process (`haystack store`). */
export interface StoreConfig extends ServerConfig {
  storeId: string;
  /** host:port other processes use to reach this store. */
  advertise: string;
  dataDir: string;
  zone: string;
  maxVolumeSize: number;
  /** At most this many volumes; beyond, writes are RESOURCE_EXHAUSTED (default 65535). */
  maxVolumes: number;
  compactionThreshold: number;
  compactionCheckIntervalMs: number;
  /** Directory instances to heartbeat to (empty: run standalone). */
  directories: string[];
  heartbeatIntervalMs: number;
  /** Bytes per chunk on Read streams. */
  readChunkSize: number;
  /** Blobs up to this size reach forward_to replicas on one ForwardWrites stream per replica (0: a Write stream each). */
  forwardInlineMax: number;
  /** Replication manager instances to stream access counts to (empty: none). */
  managers: string[];
  statsReportIntervalMs: number;
  /** Key-encryption keys (KEK_FILE or KEKS): volumes are encrypted at rest; undefined: plaintext. */
  keyring: Keyring | undefined;
  /** KEK_FILE, re-read by RewrapKeys (undefined: no keys, or inline KEKS). */
  kekFile: string | undefined;
  /** Test-only slow disk: ms each group commit's fdatasyncs wait first (FAULT_FSYNC_DELAY, default 0). */
  faultFsyncDelayMs: number;
  /** HEAP_GROWING_PERCENT: V8's heap growing factor − 1, in percent; 0: V8's own (server/heap-growing.ts). */
  heapGrowingPercent: number;
}

export const STORE_ENV_HELP = `${COMMON_ENV_HELP}
  STORE_ID               store id (default store-<port>)
  STORE_ADVERTISE        host:port others reach this store at (default: the listen address)
  DATA_DIR               where volumes live (flag --data; default ./data/<store id>)
  ZONE                   failure-domain label used to spread replicas (default none)
  MAX_VOLUME_SIZE        a volume turns read-only at this size (default 4GiB)
  MAX_VOLUMES            at most this many volumes; then writes are RESOURCE_EXHAUSTED (default 65535)
  COMPACTION_EFFICIENCY_THRESHOLD  compact volumes whose live/total is below this (default 0.60)
  COMPACTION_CHECK_INTERVAL        how often to look for such volumes (default 3600s)
  DIRECTORY_ADDRS        comma-separated directory host:port list for heartbeats
  HEARTBEAT_INTERVAL     heartbeat period (default 5s; the directories' STORE_DEGRADED_AFTER must exceed it)
  READ_CHUNK_SIZE        bytes per chunk on Read streams (default 256KiB)
  FORWARD_INLINE_MAX     blobs up to this size reach the other replicas of a write on one long-lived
                         ForwardWrites stream per replica store, larger ones on a Write stream each;
                         0 sends every blob on its own streams (default and maximum 64KiB)
  REPLICATION_ADDRS      comma-separated replication manager host:port list (access counts, corruption reports)
  STATS_REPORT_INTERVAL  how often access counts are sent (default 60s)
  KEK_FILE               file of key-encryption keys, one "<id> <base64 32 bytes>" per line, the last the
                         newest (a mounted Secret): needles are encrypted at rest (AES-256-GCM); default none
  KEKS                   the same keys inline (lines or ';'-separated), instead of KEK_FILE
${HEAP_GROWING_ENV_HELP}`;

export function readStoreConfig(
  flags: { listen?: string; data?: string },
  env: Env = process.env,
): StoreConfig {
  const r = envReader(env);
  const server = readServerConfig(r, '127.0.0.1:8001', flags);
  const port = server.listen.split(':').pop();
  const storeId = r.matching(
    'STORE_ID',
    `store-${port}`,
    /^[A-Za-z0-9._-]{1,64}$/,
    'an id of 1-64 characters [A-Za-z0-9._-]',
  );
  const cfg: StoreConfig = {
    ...server,
    storeId,
    advertise: r.hostPort('STORE_ADVERTISE', server.listen),
    dataDir: flags.data ?? r.string('DATA_DIR', `./data/${storeId}`),
    zone: r.string('ZONE', ''),
    maxVolumeSize: r.size('MAX_VOLUME_SIZE', 4 * 1024 ** 3, { min: 1024 * 1024, max: 2 ** 45 }),
    maxVolumes: r.int('MAX_VOLUMES', 65535, { min: 1, max: 65535 }),
    compactionThreshold: r.float('COMPACTION_EFFICIENCY_THRESHOLD', 0.6, { min: 0, max: 1 }),
    compactionCheckIntervalMs: r.duration('COMPACTION_CHECK_INTERVAL', 3_600_000, { minMs: 1000 }),
    directories: list(r.string('DIRECTORY_ADDRS', '')),
    heartbeatIntervalMs: r.duration('HEARTBEAT_INTERVAL', 5_000, { minMs: 50, maxMs: 600_000 }),
    readChunkSize: r.size('READ_CHUNK_SIZE', 256 * 1024, { min: 4096, max: 4 * 1024 * 1024 }),
    forwardInlineMax: r.size('FORWARD_INLINE_MAX', FORWARD_INLINE_MAX, { min: 0, max: FORWARD_INLINE_MAX }),
    managers: list(r.string('REPLICATION_ADDRS', '')),
    statsReportIntervalMs: r.duration('STATS_REPORT_INTERVAL', 60_000, { minMs: 100, maxMs: 3_600_000 }),
    keyring: readKeyring(r),
    kekFile: r.string('KEK_FILE', '') || undefined,
    // Fault injection (test/netns slow disk): each group commit's fdatasyncs wait this long first.
    faultFsyncDelayMs: r.duration('FAULT_FSYNC_DELAY', 0, { minMs: 0, maxMs: 10_000 }),
    heapGrowingPercent: readHeapGrowingPercent(r),
  };
  r.done();
  return cfg;
}

/** KEK_FILE (read and parsed now, so a bad file stops the store at start) or KEKS. */
function readKeyring(r: EnvReader): Keyring | undefined {
  const file = r.string('KEK_FILE', '');
  const inline = r.string('KEKS', '');
  if (file && inline) {
    r.problem('KEK_FILE and KEKS are both set: set one of them');
    return undefined;
  }
  try {
    if (file) return loadKekFile(file);
    if (inline) return parseKeks(inline);
  } catch (err) {
    r.problem(
      file
        ? `KEK_FILE=${JSON.stringify(file)}: ${(err as Error).message}`
        : `KEKS: ${(err as Error).message}`,
    );
  }
  return undefined;
}

export function list(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}
