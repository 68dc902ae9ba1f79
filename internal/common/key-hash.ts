/**
 * 64-bit hash of a blob id, computed as two 32-bit halves without BigInt
 * (MurmurHash3-style block mixing over two lanes with an x86_128-style
 * cross-lane finalizer). The needle map keeps only this hash, never the key.
 */
export type KeyHash = (key: string, out: Uint32Array) => void;

/** MurmurHash3's 32-bit finalizer (avalanche mix). */
export function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h;
}

/** MurmurHash3 x86_128's final mix of two lanes; the result's two low words go into `out`. */
export function finish128(lane1: number, lane2: number, out: Uint32Array): void {
  let h1 = (lane1 + lane2) | 0;
  let h2 = (lane2 + h1) | 0;
  h1 = fmix(h1);
  h2 = fmix(h2);
  h1 = (h1 + h2) | 0;
  h2 = (h2 + h1) | 0;
  out[0] = h1 >>> 0;
  out[1] = h2 >>> 0;
}

/** Writes the 64-bit hash of `key` into out[0] (low half) and out[1] (high half). */
export const hashKey64: KeyHash = (key, out) => {
  const n = key.length;
  let h1 = 0x9e3779b9 ^ n;
  let h2 = 0x7f4a7c15 ^ Math.imul(n, 0xc2b2ae3d);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    let k =
      (key.charCodeAt(i) & 0xffff) ^
      (key.charCodeAt(i + 1) << 8) ^
      (key.charCodeAt(i + 2) << 16) ^
      (key.charCodeAt(i + 3) << 24);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h1 ^= k;
    h1 = (h1 << 13) | (h1 >>> 19);
    h1 = (Math.imul(h1, 5) + 0xe6546b64) | 0;
    let k2 = Math.imul(k ^ (k >>> 15), 0x38b34ae5);
    k2 = (k2 << 17) | (k2 >>> 15);
    h2 ^= k2;
    h2 = (h2 << 15) | (h2 >>> 17);
    h2 = (Math.imul(h2, 5) + 0x561ccd1b) | 0;
  }
  let t = 0;
  for (let s = 0; i < n; i++, s += 8) t ^= key.charCodeAt(i) << s;
  if (t !== 0 || n % 4 !== 0) {
    t = Math.imul(t, 0xcc9e2d51);
    t = (t << 15) | (t >>> 17);
    h1 ^= Math.imul(t, 0x1b873593);
    h2 ^= Math.imul(t, 0x38b34ae5);
  }
  finish128(h1, h2, out);
};
