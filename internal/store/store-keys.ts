/**
 * Key maintenance of one engine: which KEKs wrap its volume keys on disk, and
 * the re-wrap of every volume's `<vid>.keys` under a new keyring's newest KEK
 * while reads and writes continue (they use the unwrapped DEKs in memory,
 * which a re-wrap does not change). crypto/rewrap.ts drives it for the store.
 */
import type { Keyring } from './crypto/kek.js';
import { FailedPreconditionError } from './errors.js';
import type { StoreCore } from './store-core.js';

/** What one engine's re-wrap did. */
export interface EngineRewrap {
  /** Volumes with keys (encrypted volumes). */
  volumes: number;
  /** Volumes whose `<vid>.keys` was rewritten. */
  rewrapped: number;
}

/** Ids of the KEKs wrapping some volume key of this engine on disk. */
export function keksInUse(core: StoreCore): Set<string> {
  const out = new Set<string>();
  for (const v of core.volumes.values()) for (const k of v.keys?.keksInUse() ?? []) out.add(k);
  return out;
}

/** Passes over the volumes: a volume created during a pass under the previous keyring is caught by the next. */
const MAX_PASSES = 3;

/**
 * Makes `ring` the engine's keyring (new volumes and compaction wrap under its
 * newest KEK from now on), then rewrites every `<vid>.keys` holding a slot
 * wrapped by another KEK (atomically, VolumeKeys.save). FailedPreconditionError
 * on a plaintext engine (no keyring); I/O errors throw, leaving the volumes not
 * yet reached under their previous KEK (still valid: a retry finishes them).
 */
export async function rewrapKeys(core: StoreCore, ring: Keyring): Promise<EngineRewrap> {
  core.checkOpen();
  if (!core.keyring) {
    throw new FailedPreconditionError(
      'this store has no key-encryption keys (KEK_FILE or KEKS): its volumes are plaintext, there are no keys to re-wrap',
    );
  }
  core.keyring = ring;
  const done = new Set<number>();
  for (let pass = 0; pass < MAX_PASSES; pass++) {
    const pending = core.orderedVolumes().filter((v) => v.keys?.needsRewrap(ring));
    if (pending.length === 0) break;
    for (const v of pending) {
      const from = [...v.keys!.keksInUse()];
      await v.keys!.save(core.dataDir, ring);
      done.add(v.id);
      core.log.info(
        { volumeId: v.id, from, to: ring.newest.id },
        'volume keys re-wrapped under the newest KEK',
      );
    }
  }
  let volumes = 0;
  for (const v of core.volumes.values()) if (v.keys) volumes++;
  return { volumes, rewrapped: done.size };
}
