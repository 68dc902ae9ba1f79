import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const reaper = path.resolve('internal/common/child-reaper.ts');

/** Whether this pid runs (a zombie has ended: its new parent, pid 1 here, reaps it late). */
function alive(pid: number): boolean {
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

describe('killOnExit', () => {
  // A parent that starts a long sleep, prints its pid and exits (as a vitest worker
  // whose hook timed out does): the sleep must not outlive it.
  function parentExitingWith(register: boolean): number {
    const script = `
      import { spawn } from 'node:child_process';
      import { killOnExit } from ${JSON.stringify(reaper)};
      const child = spawn('sleep', ['600'], { stdio: 'ignore', detached: true });
      ${register ? 'killOnExit(child);' : ''}
      child.unref();
      console.log(child.pid);
      process.exit(0);
    `;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    return Number(r.stdout.trim());
  }

  it('kills a registered child when its parent exits', async () => {
    const pid = parentExitingWith(true);
    for (let i = 0; i < 50 && alive(pid); i++) await new Promise((r) => setTimeout(r, 20));
    expect(alive(pid)).toBe(false);
  });

  it('leaves an unregistered child running (the control: without it the child is orphaned)', () => {
    const pid = parentExitingWith(false);
    try {
      expect(alive(pid)).toBe(true);
    } finally {
      process.kill(pid, 'SIGKILL');
    }
  });
});
