import v8 from 'node:v8';
import type { EnvReader } from '../config/env.js';
import type { Logger } from './logger.js';

/** HEAP_GROWING_PERCENT of a store or gateway when unset: V8's old-generation limit is 4× the live heap. */
export const DEFAULT_HEAP_GROWING_PERCENT = 300;

/** HEAP_GROWING_PERCENT's line in the --help of the roles that read it (store, gateway). */
export const HEAP_GROWING_ENV_HELP = `  HEAP_GROWING_PERCENT   V8 lets the JS heap grow to (1 + this/100) × what is live before a full GC
                         (default 300; 0: V8's own heuristic, which ran one every 0.3-0.5 s here)`;

/** Reads HEAP_GROWING_PERCENT: 0..1000, default DEFAULT_HEAP_GROWING_PERCENT. */
export function readHeapGrowingPercent(r: Pick<EnvReader, 'int'>): number {
  return r.int('HEAP_GROWING_PERCENT', DEFAULT_HEAP_GROWING_PERCENT, { min: 0, max: 1000 });
}

/**
 * Sets V8's heap growing factor (1 + percent/100) for this process; 0 keeps V8's own heuristic.
 *
 * Why (measured in docs/benchmarks.md, "Full garbage collections"): a store or gateway holds a
 * small JS heap (about 20 MB live; the needle map is in typed arrays outside it) and turns over
 * tens of MB of Buffers per second. Node 20's V8 (11.3) counts the external bytes allocated
 * since the last mark-compact against an old-generation limit of only 1.1–1.7× the live heap,
 * less the new space's capacity, so it ran a full mark-compact every 0.3–0.5 s under 64 KiB
 * writes. With a factor of 4 it runs one every 10–20 s, and the processes spend about a quarter
 * less CPU per 64 KiB write. The cost: the heap may grow to about 4× what is live (tens of
 * MB here). V8 then uses this factor in every case, also near the heap's limit (where it would
 * grow more cautiously). Not for the directory, whose live heap can be gigabytes in per-blob mode.
 *
 * `setFlags` is a parameter for tests only.
 */
export function setHeapGrowingPercent(
  percent: number,
  log: Pick<Logger, 'info'>,
  setFlags: (flags: string) => void = v8.setFlagsFromString,
): void {
  if (percent === 0) return;
  if (!Number.isSafeInteger(percent) || percent < 0) {
    throw new RangeError(`heap growing percent must be a non-negative integer, got ${percent}`);
  }
  setFlags(`--heap-growing-percent=${percent}`);
  log.info({ heapGrowingPercent: percent }, 'V8 heap growing factor set (HEAP_GROWING_PERCENT)');
}
