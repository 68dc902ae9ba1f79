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
});
