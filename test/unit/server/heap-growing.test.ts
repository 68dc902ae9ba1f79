import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { setHeapGrowingPercent } from '../../../internal/server/heap-growing.js';

const quiet = { info: () => {} };

describe('setHeapGrowingPercent', () => {
  it('passes the percent to V8 as --heap-growing-percent and does nothing for 0', () => {
    const set: string[] = [];
    setHeapGrowingPercent(0, quiet, (f) => set.push(f));
    expect(set).toEqual([]);
    setHeapGrowingPercent(300, quiet, (f) => set.push(f));
    expect(set).toEqual(['--heap-growing-percent=300']);
    expect(() => setHeapGrowingPercent(-1, quiet, (f) => set.push(f))).toThrow(RangeError);
    expect(() => setHeapGrowingPercent(1.5, quiet, (f) => set.push(f))).toThrow(RangeError);
  });

  // V8 ignores an unknown flag passed at run time, so a Node upgrade that dropped this one
  // would silently bring back a full GC every 0.3-0.5 s: this node must know it.
  it('names a flag this node knows (an unknown one is refused)', () => {
    const run = (flag: string) => spawnSync(process.execPath, [flag, '-e', '0'], { encoding: 'utf8' });
    expect(run('--heap-growing-percent=300').status).toBe(0);
    expect(run('--heap-growing-percentage=300').status).not.toBe(0);
  });

  // Set at run time (as the servers do, after start), V8 uses it for the next heap limit:
  // its GC trace prints the factor of each new limit.
  it('takes effect when set at run time: the next heap limits grow by the factor', () => {
    const work =
      'const a = []; for (let r = 0; r < 3; r++) { for (let i = 0; i < 100000; i++) a.push({ i }); gc(); }';
    const factors = (prelude: string) =>
      spawnSync(process.execPath, ['--expose-gc', '--trace-gc-verbose', '-e', prelude + work], {
        encoding: 'utf8',
      })
        .stdout.split('\n')
        .flatMap((l) => /\[HeapController\] Limit: .*\(([\d.]+)\)$/.exec(l)?.[1] ?? []);
    const set = factors("require('node:v8').setFlagsFromString('--heap-growing-percent=50');");
    expect(set.length).toBeGreaterThan(0);
    expect(new Set(set)).toEqual(new Set(['1.5']));
    expect(factors('')).not.toContain('1.5');
  });
});
