import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { claimPort, freePort, PORT_MAX, PORT_MIN } from '../../helpers/ports.js';

const CLAIMS = '/tmp/haystack-port-claims';
const claimFile = (port: number) => `${CLAIMS}/${port}`;

describe('test port claims (across processes)', () => {
  it('hands out a port once, in range, recorded under this pid', async () => {
    const port = await freePort();
    expect(port).toBeGreaterThanOrEqual(PORT_MIN);
    expect(port).toBeLessThanOrEqual(PORT_MAX);
    expect(readFileSync(claimFile(port), 'utf8')).toBe(String(process.pid));
    expect(claimPort(port)).toBe(false);
  });

  it("refuses a port a live process claimed and takes over a dead process's claim", async () => {
    let port = PORT_MAX;
    while (existsSync(claimFile(port))) port--;
    const other = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
    mkdirSync(CLAIMS, { recursive: true });
    writeFileSync(claimFile(port), String(other.pid));
    expect(claimPort(port)).toBe(false);
    other.kill('SIGKILL');
    await once(other, 'exit');
    expect(claimPort(port)).toBe(true);
    expect(readFileSync(claimFile(port), 'utf8')).toBe(String(process.pid));
  });
});
