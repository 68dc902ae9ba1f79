import { checkEcParams, type EcParams } from './codec.js';

/**
 * The Reed–Solomon code for a cluster of `stores` stores (docs/design/ec-tier.md,
 * "Defaults for the store count"): k + m ≤ stores, at most 1.5× raw bytes from 6
 * stores up, RS(10,4) from 14 (f4's production code). undefined below 3 stores.
 */
export function defaultCode(stores: number): EcParams | undefined {
  if (stores >= 14) return { k: 10, m: 4 };
  if (stores >= 6) return { k: 4, m: 2 };
  if (stores === 5) return { k: 3, m: 2 };
  if (stores === 4) return { k: 2, m: 2 };
  if (stores === 3) return { k: 2, m: 1 };
  return undefined;
}

/** What the operator set (EC_DATA_SHARDS / EC_PARITY_SHARDS: 0 = by store count). */
export interface CodeSettings {
  dataShards: number;
  parityShards: number;
  /** Losses a code must survive (EC_MIN_REDUNDANCY, default 2). */
  minRedundancy: number;
}

/**
 * The code to use with `stores` stores, or why there is none: the configured code
 * when set (it must fit the store count), else defaultCode; refused when it
 * survives fewer than minRedundancy losses (a 3-store RS(2,1) only with
 * EC_MIN_REDUNDANCY=1).
 */
export function chooseCode(stores: number, s: CodeSettings): { code: EcParams } | { reason: string } {
  const code =
    s.dataShards > 0 && s.parityShards > 0 ? { k: s.dataShards, m: s.parityShards } : defaultCode(stores);
  if (!code) return { reason: `a cold tier needs at least 3 stores; the cluster has ${stores}` };
  const bad = checkEcParams(code);
  if (bad) return { reason: bad };
  if (code.k + code.m > stores) {
    return {
      reason: `RS(${code.k},${code.m}) needs ${code.k + code.m} distinct stores; the cluster has ${stores}`,
    };
  }
  if (code.m < s.minRedundancy) {
    return {
      reason: `RS(${code.k},${code.m}) survives ${code.m} lost store(s), fewer than EC_MIN_REDUNDANCY=${s.minRedundancy}`,
    };
  }
  return { code };
}

/** Raw bytes kept per blob byte with a code: (k + m) / k. */
export function rawFactor(code: EcParams): number {
  return (code.k + code.m) / code.k;
}
