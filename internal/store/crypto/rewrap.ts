/**
 * KEK rotation without a restart (StoreService RewrapKeys, `haystack keys
 * rewrap`): re-read KEK_FILE, check it still holds every KEK that wraps a
 * volume key here, then re-wrap every volume's DEKs (blob and shard engines)
 * under its newest KEK. docs/security.md, Encryption at rest, Rotation.
 *
 * Why the check: a key file is only rewritten once its volume is reached, so
 * until the re-wrap has finished (or after one that failed half-way) some
 * volumes are still wrapped by the old KEK; a KEK_FILE without it would make
 * them unreadable at the next start. Refusing keeps "add the new key, re-wrap,
 * then remove the old one" the only order that works.
 */
import { FailedPreconditionError } from '../errors.js';
import type { EngineRewrap } from '../store-keys.js';
import { type Keyring, loadKekFile } from './kek.js';

/** An engine whose volume keys can be re-wrapped (Store). */
export interface KeyedEngine {
  keksInUse(): Set<string>;
  rewrapKeys(ring: Keyring): Promise<EngineRewrap>;
}

/** What a store's re-wrap did, over all its engines. */
export interface RewrapReport {
  /** The KEK that now wraps every volume key. */
  newestKek: string;
  /** Encrypted volumes (blob and shard engines). */
  volumes: number;
  /** Volumes whose key file was rewritten. */
  rewrapped: number;
  /** KEK ids wrapping some volume key after the re-wrap, sorted. */
  keksInUse: string[];
  /** KEK_FILE was re-read (false: inline KEKS, the keys the store started with). */
  reloaded: boolean;
}

export class KeyRewrapper {
  /** The keyring of the last successful re-wrap (or the one the store started with). */
  private ring: Keyring;
  /** One re-wrap at a time: a second waits for the first. */
  private running: Promise<unknown> = Promise.resolve();

  /**
   * `kekFile`: re-read at each re-wrap (undefined when the keys were inline,
   * KEKS); `ring`: the keys the store started with; `engines`: every engine
   * of the store holding volume keys.
   */
  constructor(
    private readonly kekFile: string | undefined,
    ring: Keyring,
    private readonly engines: readonly KeyedEngine[],
  ) {
    this.ring = ring;
  }

  /** Re-wraps; FailedPreconditionError when KEK_FILE does not read or lacks a KEK in use. */
  rewrap(): Promise<RewrapReport> {
    const run = this.running.then(() => this.run());
    this.running = run.catch(() => {});
    return run;
  }

  private async run(): Promise<RewrapReport> {
    const ring = this.load();
    const used = this.inUse();
    const missing = used.filter((id) => !ring.get(id));
    if (missing.length > 0) {
      const them = missing.length === 1 ? 'it' : 'them';
      throw new FailedPreconditionError(
        `KEK_FILE no longer holds ${missing.map((k) => `"${k}"`).join(', ')}, which still wraps volume keys on this store (in use: ${used.join(', ')}); put ${them} back, re-wrap, and only then remove ${them}`,
      );
    }
    let volumes = 0;
    let rewrapped = 0;
    for (const e of this.engines) {
      const r = await e.rewrapKeys(ring);
      volumes += r.volumes;
      rewrapped += r.rewrapped;
    }
    this.ring = ring;
    return {
      newestKek: ring.newest.id,
      volumes,
      rewrapped,
      keksInUse: this.inUse(),
      reloaded: this.kekFile !== undefined,
    };
  }

  private load(): Keyring {
    if (this.kekFile === undefined) return this.ring;
    try {
      return loadKekFile(this.kekFile);
    } catch (err) {
      // loadKekFile's messages name the line and never echo key material.
      throw new FailedPreconditionError(
        `KEK_FILE=${JSON.stringify(this.kekFile)}: ${(err as Error).message}; nothing was re-wrapped`,
      );
    }
  }

  private inUse(): string[] {
    const all = new Set<string>();
    for (const e of this.engines) for (const k of e.keksInUse()) all.add(k);
    return [...all].sort();
  }
}
