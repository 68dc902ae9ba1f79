/**
 * Maintenance verbs: compaction (compaction.ts does one volume) and scrub
 * (scrub.ts does one volume). Reads continue throughout; new writes go to
 * other volumes while one is compacted.
 */
import { type CompactionResult, compactVolume } from './compaction.js';
import { NotFoundError } from './errors.js';
import { type ScrubReport, scrubVolume } from './scrub.js';
import type { StoreCore } from './store-core.js';
import type { Volume } from './volume.js';

/**
 * Compacts `volumeId` (if below the threshold, or `force`), or every volume
 * below the threshold. NotFoundError for an unknown volume.
 */
export async function compactVolumes(
  core: StoreCore,
  volumeId?: number,
  force = false,
): Promise<CompactionResult[]> {
  core.checkOpen();
  let targets: Volume[];
  if (volumeId !== undefined) {
    const v = core.volumes.get(volumeId);
    if (!v) throw new NotFoundError(`volume ${volumeId} does not exist on this store`);
    targets = force || core.efficiency(v) < core.compactionThreshold ? [v] : [];
  } else {
    targets = core.orderedVolumes().filter((v) => force || core.efficiency(v) < core.compactionThreshold);
  }
  const out: CompactionResult[] = [];
  for (const v of targets) {
    if (v.compacting || v.broken !== undefined) continue;
    let res: CompactionResult;
    try {
      res = await compactVolume(
        {
          dir: core.dataDir,
          map: core.map,
          log: core.log,
          hooks: core.hooks,
          recompute: (vol) => core.recomputeStats(vol),
          get keyring() {
            return core.keyring; // the current one at each save (RewrapKeys may replace it)
          },
        },
        v,
      );
    } catch (error) {
      core.hooks.onCompaction?.(v.id, { error });
      throw error;
    }
    core.hooks.onCompaction?.(v.id, { result: res });
    out.push(res);
  }
  return out;
}

/** Verifies every indexed needle of one or all volumes. NotFoundError for an unknown volume. */
export async function scrubVolumes(core: StoreCore, volumeId?: number): Promise<ScrubReport> {
  core.checkOpen();
  let vols: Volume[];
  if (volumeId === undefined) vols = core.orderedVolumes();
  else {
    const v = core.volumes.get(volumeId);
    if (!v) throw new NotFoundError(`volume ${volumeId} does not exist on this store`);
    vols = [v];
  }
  const total: ScrubReport = { needlesChecked: 0, bytesChecked: 0, corrupt: [] };
  for (const v of vols) {
    const r = await scrubVolume(v, core.map);
    core.hooks.onScrub?.(v.id, r);
    total.needlesChecked += r.needlesChecked;
    total.bytesChecked += r.bytesChecked;
    total.corrupt.push(...r.corrupt);
  }
  return total;
}
