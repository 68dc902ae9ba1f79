import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { hashKey64, type KeyHash } from '../../../internal/common/key-hash.js';
import { groupOfHash } from '../../../internal/common/placement.js';
import { type NeedleLocation, NeedleMap } from '../../../internal/store/needle-map.js';

/** A fake "disk": every location ever handed out remembers the key written there. */
function harness(hash?: KeyHash) {
  const disk = new Map<string, string>();
  let next = 1;
  const map = new NeedleMap({
    keyAt: (loc) => disk.get(`${loc.volumeId}:${loc.offset}`),
    initialCapacity: 4,
    ...(hash ? { hash } : {}),
  });
  const place = (key: string, deleted = false): NeedleLocation => {
    const loc = {
      volumeId: next % 7,
      offset: next * 8,
      length: 8 * (1 + (next % 50)),
      deleted,
      stamp: 1_700_000_000_000 + next * 4_294_967, // crosses 2^32 boundaries of the split stamp
    };
    next++;
    disk.set(`${loc.volumeId}:${loc.offset}`, key);
    return loc;
  };
  return { map, place };
}

type Op =
  | { t: 'set'; k: string; del: boolean }
  | { t: 'delete'; k: string }
  | { t: 'get'; k: string }
  | { t: 'replace'; k: string };

const keys = fc.constantFrom(...Array.from({ length: 40 }, (_, i) => `key-${i}`));
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ t: fc.constant('set' as const), k: keys, del: fc.boolean() }),
  fc.record({ t: fc.constant('delete' as const), k: keys }),
  fc.record({ t: fc.constant('get' as const), k: keys }),
  fc.record({ t: fc.constant('replace' as const), k: keys }),
);

const hashes: Record<string, KeyHash | undefined> = {
  default: undefined,
  'all-collide': (_k, out) => {
    out[0] = 12345;
    out[1] = 6789;
  },
  'few-buckets': (k, out) => {
    out[0] = (k.length * 0x9e3779b9) >>> 0;
    out[1] = k.charCodeAt(k.length - 1) & 3;
  },
  'clustered-homes': (k, out) => {
    hashKey64(k, out);
    out[0] = ((out[0]! % 5) * 0x06000000) >>> 0; // 5 nearby homes → interleaved clusters
  },
  'wrapping-clusters': (k, out) => {
    hashKey64(k, out);
    out[0] = (0xc0000000 + (out[0]! % 8) * 0x08000000) >>> 0; // homes at the table's end → clusters wrap to 0
  },
  'same-home-different-hash': (k, out) => {
    out[0] = 0;
    hashKey64(k, out);
    out[0] = 7; // every key has the same home slot, distinct high halves
  },
};

describe('NeedleMap vs reference Map', () => {
  for (const [name, hash] of Object.entries(hashes)) {
    it(`agrees under random operations (${name} hash)`, () => {
      fc.assert(
        fc.property(fc.array(opArb, { minLength: 20, maxLength: 400 }), (ops) => {
          const { map, place } = harness(hash);
          const ref = new Map<string, NeedleLocation>();
          for (const op of ops) {
            if (op.t === 'set') {
              const loc = place(op.k, op.del);
              map.set(op.k, loc);
              ref.set(op.k, loc);
            } else if (op.t === 'delete') {
              expect(map.delete(op.k)).toBe(ref.delete(op.k));
            } else if (op.t === 'replace') {
              const cur = ref.get(op.k);
              const wrong = { volumeId: 99, offset: 8 };
              const loc = place(op.k);
              expect(map.replace(op.k, wrong, loc)).toBe(false);
              if (cur) {
                expect(map.replace(op.k, cur, loc)).toBe(true);
                ref.set(op.k, loc);
              } else {
                expect(map.replace(op.k, { volumeId: loc.volumeId, offset: loc.offset }, loc)).toBe(false);
              }
            }
            // full consistency check after every step
            for (let i = 0; i < 40; i++) {
              const k = `key-${i}`;
              expect(map.get(k)).toEqual(ref.get(k));
            }
            expect(map.size).toBe(ref.size);
          }
          let n = 0;
          map.forEach(() => {
            n++;
          });
          expect(n).toBe(ref.size);
        }),
        { numRuns: 80 },
      );
    });
  }

  for (const [name, hash] of Object.entries(hashes)) {
    it(`agrees over a long seeded random sequence (${name} hash)`, () => {
      const { map, place } = harness(hash);
      const ref = new Map<string, NeedleLocation>();
      let x = 12345;
      const rnd = (n: number) => {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        return (x >>> 8) % n;
      };
      for (let step = 0; step < 20_000; step++) {
        const k = `key-${rnd(60)}`;
        if (rnd(100) < 55) {
          const loc = place(k, rnd(10) === 0);
          map.set(k, loc);
          ref.set(k, loc);
        } else {
          expect(map.delete(k)).toBe(ref.delete(k));
        }
        if (step % 25 === 0) for (const [kk, loc] of ref) expect(map.get(kk), `${kk} @${step}`).toEqual(loc);
      }
      expect(map.size).toBe(ref.size);
    });
  }

  it('routes genuine hash collisions to the overflow map and lookup() returns candidates', () => {
    const { map, place } = harness(hashes['all-collide']);
    const a = place('a');
    const b = place('b');
    map.set('a', a);
    map.set('b', b);
    expect(map.overflowSize).toBe(1);
    expect(map.get('a')).toEqual(a);
    expect(map.get('b')).toEqual(b);
    expect(map.get('c')).toBeUndefined();
    // unconfirmed candidate for 'c' is a's slot: the caller must check the key on disk
    expect(map.lookup('c')).toEqual(a);
    expect(map.lookup('b')).toEqual(b);
  });

  it('grows and keeps ≤ 42 bytes per entry (24-byte slots) after growth at scale', () => {
    const map = new NeedleMap({ keyAt: () => undefined, initialCapacity: 16 });
    const n = 200_000;
    for (let i = 0; i < n; i++)
      map.set(`blob-${i}`, { volumeId: i & 0xff, offset: i * 8, length: 64, deleted: false });
    expect(map.size).toBe(n);
    expect(map.overflowSize).toBe(0);
    expect(map.tableBytes / n).toBeLessThanOrEqual(42);
    for (let i = 0; i < n; i += 997) expect(map.lookup(`blob-${i}`)?.offset).toBe(i * 8);
    expect(map.lookup('blob-x')).toBeUndefined();
  });
});

describe('NeedleMap live bytes per placement group', () => {
  /** Live bytes per group of the reference map, as liveBytesByGroup answers them. */
  function expected(ref: Map<string, NeedleLocation>, groups: number, hash: KeyHash = hashKey64) {
    const by = new Map<number, number>();
    const h = new Uint32Array(2);
    for (const [k, loc] of ref) {
      if (loc.deleted) continue;
      hash(k, h);
      const g = groupOfHash(h[1]!, groups);
      by.set(g, (by.get(g) ?? 0) + loc.length);
    }
    return [...by].sort((a, b) => a[0] - b[0]).map(([group, bytes]) => ({ group, bytes }));
  }

  for (const [name, hash] of Object.entries(hashes)) {
    it(`equal a recount after any writes, tombstones, moves and removals (${name} hash)`, () => {
      fc.assert(
        fc.property(
          fc.array(opArb, { minLength: 1, maxLength: 300 }),
          fc.integer({ min: 0, max: 300 }),
          fc.integer({ min: 1, max: 9 }),
          (ops, trackAt, groups) => {
            const { map, place } = harness(hash);
            const ref = new Map<string, NeedleLocation>();
            for (const [i, op] of ops.entries()) {
              // Tracking may start at any point: the first count is one pass, then each change.
              if (i === trackAt) map.trackGroups(groups);
              if (op.t === 'set') {
                const loc = place(op.k, op.del);
                map.set(op.k, loc);
                ref.set(op.k, loc);
              } else if (op.t === 'delete') {
                map.delete(op.k);
                ref.delete(op.k);
              } else if (op.t === 'replace') {
                const cur = ref.get(op.k);
                const loc = place(op.k, op.k.endsWith('7'));
                if (cur && map.replace(op.k, cur, loc)) ref.set(op.k, loc);
              }
            }
            map.trackGroups(groups);
            expect(map.liveBytesByGroup()).toEqual(expected(ref, groups, hash));
          },
        ),
        { numRuns: 60 },
      );
    });
  }

  it('reports nothing until tracking starts; another group count starts over', () => {
    const { map, place } = harness();
    const ref = new Map<string, NeedleLocation>();
    for (let i = 0; i < 50; i++) {
      const loc = place(`k${i}`, i % 10 === 0);
      map.set(`k${i}`, loc);
      ref.set(`k${i}`, loc);
    }
    expect(map.trackedGroups).toBe(0);
    expect(map.liveBytesByGroup()).toEqual([]);
    map.trackGroups(4);
    expect(map.liveBytesByGroup()).toEqual(expected(ref, 4));
    map.trackGroups(7);
    expect(map.trackedGroups).toBe(7);
    expect(map.liveBytesByGroup()).toEqual(expected(ref, 7));
  });
});
