// The policy model of bench:ec: the effective replication factor of a Zipf read
// workload once it has cooled — every blob's steady read rate is its Zipf share of
// the total, and the replica policy (replication defaults: 3 replicas, 4 at 60
// reads/min, 5 at 150) and the tier policy (cold below EC_COLD_RATE, 0.1/min)
// place it. A model of the policies' steady state, not a cluster measurement: the
// cold path that would carry it out is not built yet (docs/design/ec-tier.md).
import { rawFactor } from '../internal/ec/params.js';

export interface ZipfRow {
  blobs: number;
  readsPerMin: number;
  code: string;
  coldShare: number;
  hotShare: number;
  effective: number;
  coldEffective: number;
}

/** Stub needles on the group's 3 members per cold blob, relative to a 100 KB blob (≈ 150 B each). */
const STUB_OVERHEAD = (3 * 150) / 100_000;

export function zipfModel(
  blobs: number,
  readsPerMin: number,
  code: { k: number; m: number },
  s = 1,
  coldRate = 0.1,
): ZipfRow {
  let h = 0;
  for (let r = 1; r <= blobs; r++) h += 1 / r ** s;
  let cold = 0;
  let hot = 0;
  let total = 0;
  const ec = rawFactor(code) + STUB_OVERHEAD;
  for (let r = 1; r <= blobs; r++) {
    const rate = (readsPerMin * (1 / r ** s)) / h;
    let f = 3;
    if (rate >= 150) f = 5;
    else if (rate >= 60) f = 4;
    else if (rate < coldRate) f = ec;
    if (f === ec) cold++;
    if (f > 3) hot++;
    total += f;
  }
  return {
    blobs,
    readsPerMin,
    code: `RS(${code.k},${code.m})`,
    coldShare: cold / blobs,
    hotShare: hot / blobs,
    effective: total / blobs,
    coldEffective: ec,
  };
}
