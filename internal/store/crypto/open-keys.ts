/**
 * Startup: the DEKs of every volume of a data directory, before the volumes
 * open. With a keyring, a volume without `<vid>.keys` (a plaintext volume, or
 * one whose creation crashed before its keys were saved) gets fresh keys, and
 * keys wrapped by an older KEK are re-wrapped under the newest one (KEK
 * rotation). KeyringError, naming KEK_FILE, when a volume is encrypted and the
 * keyring is missing or cannot unwrap it.
 */
import type { RecoveryLogger } from '../recovery.js';
import type { Keyring } from './kek.js';
import { loadVolumeKeys, newVolumeKeys, settleKeyFiles, type VolumeKeys } from './volume-keys.js';

export async function openVolumeKeys(
  dir: string,
  volumeIds: readonly number[],
  ring: Keyring | undefined,
  log: RecoveryLogger,
): Promise<Map<number, VolumeKeys>> {
  await settleKeyFiles(dir);
  const out = new Map<number, VolumeKeys>();
  for (const id of volumeIds) {
    let keys = await loadVolumeKeys(dir, id, ring);
    if (ring && !keys) {
      keys = newVolumeKeys(id);
      await keys.save(dir, ring);
      log.info({ volumeId: id }, 'volume keys created: new needles are encrypted at rest');
    } else if (ring && keys?.needsRewrap(ring)) {
      const from = [...new Set(keys.slots.map((s) => keys!.kekOf(s)))];
      await keys.save(dir, ring);
      log.info({ volumeId: id, from, to: ring.newest.id }, 'volume keys re-wrapped under the newest KEK');
    }
    if (keys) out.set(id, keys);
  }
  return out;
}
